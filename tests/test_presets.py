"""The paper presets run end to end (tiny sizes) on a synthetic tree in the NYUv2 layout."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from okd.app import run
from okd.data.synthetic import write_layout
from okd.config import compose as compose_cfg

TINY_RESNET = ["backbone.pretrained=false", "backbone.depth=18", "backbone.width=0.0625", "backbone.layers=[1,1,1,1]",
               "backbone.aspp_channels=4", "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=4",
               "trainer.num_workers=0", "trainer.progress=false", "trainer.log_images=0", "logger=none"]


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("nyu"), "nyuv2", n_train=10, n_val=4, height=32, width=32)


@pytest.mark.parametrize("experiment, extra", [
    ("okd", ["kd.warmup_epochs=1"]),
    ("okd_no_otw", ["kd.warmup_epochs=0"]),
    ("stl_depth", []),
    ("mtan", ["backbone.layers=[2,2,2,2]"]),
])
def test_preset_runs(tmp_path, nyu_root, experiment, extra):
    cfg = compose_cfg([f"experiment={experiment}", f"dataset.root={nyu_root}", *TINY_RESNET, *extra])
    summary = run(cfg, tmp_path, choices={"backbone": cfg.hydra.runtime.choices["backbone"]})
    assert summary["dataset"] == "NYUv2" and summary["epochs"] == 1
    if experiment.startswith("okd"):
        assert summary["delta"]["base"]["kind"] == "teachers"


# ------------------------------------------------------------------ protocol=none: any preset on synthetic scenes
ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))
TINY_SYNTHETIC = ["dataset.height=32", "dataset.width=32", "dataset.train_size=4", "dataset.val_size=2",
                  "dataset.test_size=2", "trainer.epochs=1", "trainer.batch_size=2", "trainer.eval_batch_size=2",
                  "trainer.progress=false", "trainer.log_images=0", "logger=none"]
#: the presets that choose a ResNet-50-sized network themselves (not through their protocol): smallest version
TINY_OWN_BACKBONE = {"mtan": ["backbone.depth=18", "backbone.width=0.0625", "backbone.layers=[2,2,2,2]",
                              "backbone.aspp_channels=4"],
                     "cross_stitch": ["backbone.depth=18", "backbone.width=0.0625", "backbone.layers=[1,1,1,1]",
                                      "backbone.aspp_channels=4"]}


@pytest.mark.parametrize("experiment", PRESETS)
def test_protocol_none_puts_every_preset_on_the_synthetic_scenes(experiment):
    """`protocol=none` drops the preset's protocol: the default dataset (synthetic), backbone and schedule, no
    pretrained weights (no download); what the preset itself chooses stays."""
    with_protocol = compose_cfg([f"experiment={experiment}"], as_run=False)
    cfg = compose_cfg([f"experiment={experiment}", "protocol=none"], as_run=False)
    default = compose_cfg([], as_run=False)
    assert cfg.dataset._target_ == "okd.data.synthetic.build"
    assert not cfg.backbone.get("pretrained", False)
    assert cfg.trainer.epochs == (default.trainer.epochs if experiment != "smoke" else 1)
    for group in ("weighting", "kd"):  # the method is the preset's (as written: e.g. kd's teacher lr follows the trainer's)
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(with_protocol[group]), group
    assert list(cfg.dataset.tasks) == list(with_protocol.dataset.tasks)  # stl_*: one task
    if experiment in TINY_OWN_BACKBONE:
        assert cfg.backbone._target_ == with_protocol.backbone._target_
    else:
        assert cfg.backbone == default.backbone


@pytest.mark.parametrize("sweep", SWEEPS)
def test_protocol_none_puts_every_ready_sweep_on_the_synthetic_scenes(sweep):
    cfg = compose_cfg([f"+sweep={sweep}", "protocol=none"], as_run=False)
    assert cfg.dataset._target_ == "okd.data.synthetic.build" and not cfg.backbone.get("pretrained", False)
    params = cfg.hydra.sweeper.params
    first = str(params.get("experiment", "")).split(",")[0]
    if first:  # its first job too (the swept preset selects its protocol; the command line wins)
        job = compose_cfg([f"+sweep={sweep}", "protocol=none", f"experiment={first}"], as_run=False)
        assert job.dataset._target_ == "okd.data.synthetic.build"


@pytest.fixture(scope="module")
def stl_teachers(tmp_path_factory):
    """The three single-task presets on the synthetic scenes (KD-MTL's teachers)."""
    root = tmp_path_factory.mktemp("stl")
    for task in ("segmentation", "depth", "normal"):
        cfg = compose_cfg([f"experiment=stl_{task}", "protocol=none", *TINY_SYNTHETIC])
        run(cfg, root / task, choices=dict(cfg.hydra.runtime.choices))
    return root


@pytest.mark.parametrize("experiment", [p for p in PRESETS if p != "kdmtl_sweep"])
def test_every_preset_trains_with_protocol_none(tmp_path, stl_teachers, experiment):
    """Each preset trains one tiny epoch on the synthetic scenes with `protocol=none` (kdmtl_sweep finds its
    teachers only inside a sweep: tests/test_sweeps.py)."""
    extra = list(TINY_OWN_BACKBONE.get(experiment, []))
    if experiment == "kdmtl":
        extra += [f"kd.teachers.{t}={stl_teachers / t}" for t in ("segmentation", "depth", "normal")]
    cfg = compose_cfg([f"experiment={experiment}", "protocol=none", *TINY_SYNTHETIC, *extra])
    summary = run(cfg, tmp_path, choices=dict(cfg.hydra.runtime.choices))
    assert summary["epochs"] == 1 and summary["choices"]["protocol"] == "none", summary["choices"]
    assert summary["dataset"] == "synthetic", summary["dataset"]
