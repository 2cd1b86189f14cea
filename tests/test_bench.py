"""The benchmark harness: structure, ratios, targets and options (nothing asserts on times: benchmarks
are not timed tests). Tiny networks (SegNet width 0.0625 at 32x32: five poolings need >= 32 pixels)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from okd import bench

TINY = ["--size", "32x32", "--batch", "2", "--width", "0.0625", "--steps", "1", "--rounds", "1", "--warmup", "0",
        "--device", "cpu", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_threads():
    """--threads sets torch's thread count; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(variant: dict, part: str) -> dict[str, dict]:
    return {r["config"]: r for r in variant["rows"] if r["part"] == part}


def test_one_run_times_training_okd_and_evaluation_with_ratios_and_targets(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # a kd.* override reaches the OKD configuration only (kd=none of the others would refuse it)
    bench.main(["--methods", "dwa,gradnorm,famo,pcgrad,otw", *TINY, "--override", "kd.warmup_epochs=0",
                "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["setup"]["device"] == "cpu" and result["setup"]["threads"] == 1
    assert result["setup"]["command"].startswith("python -m okd.bench --methods dwa,gradnorm")
    (variant,) = result["variants"]
    assert (variant["variant"], variant["precision"], variant["channels_last"], variant["compile"]) == \
        ("32", "32", False, False)

    train = _rows(variant, "train")
    assert list(train) == ["bare", "ew", "dwa", "gradnorm", "famo", "pcgrad"]  # floor first, ew always timed
    assert "needs teacher losses" in variant["skipped"]["otw"]                # OTW needs kd=okd: skipped
    for r in train.values():
        assert r["vs"]["bare"] == pytest.approx(r["ms"] / train["bare"]["ms"])
        assert r["vs"]["ew"] == pytest.approx(r["ms"] / train["ew"]["ms"])
        assert r["peak_mib"] is None and r["unit"] == "step"  # no allocator statistics on the CPU
    assert {c: (r["target"]["against"], r["target"]["limit"]) if r["target"] else None for c, r in train.items()} \
        == {"bare": None, "ew": ("bare", 1.05), "dwa": ("ew", 1.05), "gradnorm": ("ew", 1.5), "famo": None,
            "pcgrad": None}

    okd = _rows(variant, "okd")
    assert list(okd) == ["okd", "bare student + AFD", "bare teacher segmentation", "bare teacher depth",
                         "bare teacher normal", "sum of components"]
    floor = okd["sum of components"]["ms"]
    assert floor == pytest.approx(sum(r["ms"] for c, r in okd.items() if c.startswith("bare")))
    assert okd["okd"]["vs"]["components"] == pytest.approx(okd["okd"]["ms"] / floor)
    assert okd["okd"]["target"]["limit"] == 1.10 and okd["okd"]["note"] == "weighting otw"

    evaluation = _rows(variant, "eval")
    assert list(evaluation) == ["bare", "evaluate"] and evaluation["bare"]["unit"] == "batch"
    assert evaluation["evaluate"]["vs"]["bare"] == pytest.approx(evaluation["evaluate"]["ms"] / evaluation["bare"]["ms"])

    targeted = [r for r in variant["rows"] if r["target"]]
    assert [(c["part"], c["config"]) for c in variant["checks"]] == [(r["part"], r["config"]) for r in targeted]
    for check in variant["checks"]:
        assert check["ok"] == (check["ratio"] <= check["limit"])
    printed = capsys.readouterr().out
    assert "| gradnorm |" in printed and "vs EW <= 1.50x: " in printed and "vs components <= 1.10x: " in printed
    assert "| evaluate |" in printed and "skipped otw:" in printed


def test_variants_run_one_after_the_other_and_print_side_by_side(capsys):
    result = bench.main(["--methods", "ew", "--no-okd", "--variants", "32,bf16+cl", *TINY])
    assert [(v["variant"], v["precision"], v["channels_last"]) for v in result["variants"]] == \
        [("32", "32", False), ("bf16+cl", "bf16", True)]
    for v in result["variants"]:
        assert [(r["part"], r["config"]) for r in v["rows"]] == \
            [("train", "bare"), ("train", "ew"), ("eval", "bare"), ("eval", "evaluate")]
    printed = capsys.readouterr().out
    assert "Variants side by side" in printed and "| part | config | 32 | bf16+cl |" in printed


def test_loss_based_weightings_are_held_to_ew_and_the_others_have_no_target():
    loss_based = bench.Target("ew", bench.LOSS_LIMIT)
    for method in ("dwa", "uw", "rlw", "gls", "otw"):
        assert bench.target_for(method) == (loss_based, "")
    assert bench.target_for("ew") == (bench.Target("bare", 1.05), "")
    assert bench.target_for("gradnorm") == (bench.Target("ew", 1.5), "")
    assert bench.target_for("famo")[0] is None and "forward" in bench.target_for("famo")[1]
    for method in ("pcgrad", "mgda", "cagrad", "nashmtl"):
        assert bench.target_for(method) == (None, "gradient-based: K backward passes")


def test_variant_spelling_and_what_it_sets_in_framework_and_bare_loop():
    assert bench.parse_variant("fp32") == bench.Variant("32")
    assert bench.parse_variant("BF16+cl") == bench.Variant("bf16", channels_last=True)
    v = bench.parse_variant("16+cl+compile")
    assert (v.name, v.precision, v.channels_last, v.compile) == ("16+cl+compile", "16", True, True)
    assert v.overrides() == ["trainer.precision=16", "trainer.channels_last=true", "trainer.compile=true"]
    assert isinstance(v.scaler(torch.device("cpu")), torch.amp.GradScaler)
    assert bench.Variant("bf16").scaler(torch.device("cpu")) is None
    with bench.Variant("bf16").autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with bench.Variant("32").autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    conv = bench.Variant("32", channels_last=True).prepare(nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for bad in ("8", "bf16+nhwc", "bf16+cl+cl", ""):
        with pytest.raises(ValueError, match="variant"):
            bench.parse_variant(bad)


def test_fp16_bare_step_goes_through_the_grad_scaler():
    """precision 16: the bare loop scales the loss (the gradient is S times larger before unscaling)."""
    torch.manual_seed(0)
    model, seen = nn.Linear(4, 1), []
    model.weight.register_hook(lambda g: seen.append(g.detach().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    images = 0.01 * torch.randn(3, 4)  # small: S * grad stays inside fp16's range (no skipped step)
    variant = bench.Variant("16")
    bench.plain_step(model, lambda out: out.float().pow(2).mean(), images, opt, variant, torch.device("cpu"))()
    bench.plain_step(model, lambda out: out.float().pow(2).mean(), images, opt, bench.Variant("32"),
                     torch.device("cpu"))()
    scale = variant.scaler(torch.device("cpu")).get_scale()  # the initial scale, 2**16
    assert seen[0] / scale == pytest.approx(seen[1], rel=1e-2)


def test_overrides_go_to_every_configuration_and_kd_ones_to_okd_only():
    args = bench.parse_args(["--override", "kd.afd=false", "--override", "trainer.optimizer.lr=0.1",
                             "--okd-weighting", "uw"])
    base = bench.base_overrides(args, 32, 48)
    assert "trainer.optimizer.lr=0.1" in base and "dataset.height=32" in base and "dataset.width=48" in base
    assert not any(o.startswith("kd.") for o in base)
    assert bench.okd_overrides(args) == ["kd=okd", "weighting=uw", "kd.afd=false"]


def test_preset_gpu_is_the_paper_setting_and_explicit_options_win():
    args = bench.parse_args(["--preset", "gpu"])
    assert (args.backbone, args.width, args.size, args.batch, args.device, args.variants) == \
        ("resnet50", 1.0, "288x384", 8, "cuda", "32,bf16,bf16+cl")
    assert bench.parse_args(["--preset", "gpu", "--batch", "4", "--device", "cpu"]).batch == 4
    assert [v.name for v in bench.variants_of(args)] == ["32", "bf16", "bf16+cl"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ew,nope"], "unknown weighting"),
    (["--variants", "32,bf16", "--precision", "bf16"], "do not combine"),
    (["--variants", "32,fp8"], "precision 'fp8'"),
    (["--override", "trainer.precision=bf16"], "--precision"),
    (["--size", "32"], "expected HxW"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--methods", "none", "--no-okd", "--no-eval"], "nothing to time"),
    (["--okd-weighting", "nope"], "--okd-weighting"),
    (["--override", "kd.afd=false", "--no-okd"], "switches off"),
    (["--override", "kd.nope=1", "--methods", "none", "--no-eval"], "rejects the configuration.*nope"),
    (["--override", "trainer.batch_size=0", "--methods", "ew"], "rejects the configuration.*trainer.batch_size"),
])
def test_bad_options_are_refused_before_any_timing(argv, message):
    with pytest.raises(SystemExit, match=message):
        bench.run(bench.parse_args([*argv, "--device", "cpu"]))
