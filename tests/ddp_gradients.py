"""One training step of every DDP-capable configuration, for tests/test_distributed.py.

    python tests/ddp_gradients.py OUT.pt                              # one process, the whole batch
    torchrun --standalone --nproc_per_node=2 tests/ddp_gradients.py OUT.pt   # two halves of it

For each configuration the script builds the real framework (okd.app.build + Trainer.setup), puts
the networks in eval mode (batch norm then uses running statistics, so a sample's output does not
depend on which process sees it), runs ``Trainer.training_step`` on a fixed batch of 4 whose
targets are valid everywhere (every per-process loss is then a mean over the same number of
pixels), and rank 0 saves every gradient the step produced (student, weighting, distiller) and the
task weights. Two processes with 2 samples each must give what one process gives with all 4.
Configurations DDP refuses are recorded with their error message.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from okd import distributed
from okd.app import build
from okd.bench import compose

COMMON = [
    "dataset.height=32", "dataset.width=32", "dataset.train_size=4", "dataset.val_size=2", "dataset.test_size=2",
    "backbone.width=0.0625", "trainer.device=cpu", "logger=none", "trainer.progress=false",
    "trainer.optimizer._target_=torch.optim.SGD", "~trainer.optimizer.weight_decay", "trainer.log_images=0",
]
WEIGHTINGS = Path(__file__).resolve().parents[1] / "conf" / "weighting"
#: a distiller with a gradient method, besides the weightings themselves
EXTRA = {"okd_pcgrad": ["kd=okd", "weighting=pcgrad", "kd.warmup_epochs=0"]}


def _weighting(option: str):
    # ${seed} in some files resolves against a root key, as in the composed config.
    cfg = OmegaConf.create({"seed": 0, "weighting": OmegaConf.load(WEIGHTINGS / f"{option}.yaml")})
    return instantiate(cfg.weighting, _convert_="all")


def configurations() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(run, refused), derived from conf/weighting/: every option is run, with OKD's teachers when
    it needs reference losses (``okd_<option>``), or expected to be refused under torchrun when it
    needs the shared representation; such an option is also run at ``level=parameters`` as
    ``<option>_params`` unless another option is that (mgda_ub -> mgda)."""
    options = sorted(p.stem for p in WEIGHTINGS.glob("*.yaml"))
    run, refused = {}, {}
    for option in options:
        method = _weighting(option)
        if method.needs_representation:
            refused[option] = [f"weighting={option}"]
            preset_of = option.removesuffix("_ub") if option.endswith("_ub") else None
            if "parameters" in getattr(method, "levels", ()) and preset_of not in options:
                run[f"{option}_params"] = [f"weighting={option}", "weighting.level=parameters"]
        elif method.needs_reference_losses:
            run[f"okd_{option}"] = ["kd=okd", f"weighting={option}", "kd.warmup_epochs=0"]
        else:
            run[option] = [f"weighting={option}"]
    return {**run, **EXTRA}, refused


CONFIGS, REFUSED = configurations()
BATCH = 4


def fixed_batch(num_classes: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    normal = torch.nn.functional.normalize(torch.randn(BATCH, 3, 32, 32, generator=g), dim=1)
    targets = {"segmentation": torch.randint(0, num_classes, (BATCH, 32, 32), generator=g),
               "depth": torch.rand(BATCH, 1, 32, 32, generator=g) + 0.5, "normal": normal}
    return images, targets


def one_step(overrides: list[str], run_dir: Path) -> dict[str, torch.Tensor]:
    trainer, ctx = build(compose(COMMON + overrides), run_dir)
    trainer.setup(ctx)
    ctx.model.eval()
    ctx.distiller.eval()
    images, targets = fixed_batch(ctx.data.num_classes)
    shard = slice(distributed.rank() * BATCH // distributed.world_size(),
                  (distributed.rank() + 1) * BATCH // distributed.world_size())
    _, weights = trainer.training_step(images[shard], {k: v[shard] for k, v in targets.items()})
    ctx.distiller.after_step()  # teachers' and adaptors' gradients are averaged there
    out = {"weights": weights.detach().clone()}
    for owner, module in (("model", ctx.model), ("weighting", ctx.weighting), ("distiller", ctx.distiller)):
        for name, p in module.named_parameters():
            if p.grad is not None:
                out[f"{owner}.{name}"] = p.grad.detach().clone()
    return out


def main(path: str) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    results: dict[str, object] = {"world_size": distributed.world_size()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in CONFIGS.items():
            results[name] = one_step(overrides, Path(tmp) / name)
        for name, overrides in REFUSED.items():
            try:
                one_step(overrides, Path(tmp) / name)
                results[name] = "accepted"
            except ValueError as err:
                results[name] = f"refused: {err}"
    if distributed.is_main():
        torch.save(results, path)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
