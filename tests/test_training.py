"""The loop end to end, in-process: outputs, resume, learnability and the W&B read-back."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from okd.app import build, run
from okd.engine.trainer import Trainer
from okd.config import compose as compose_cfg
from tests.wandb_records import read_run

TINY = ["dataset.train_size=16", "dataset.val_size=8", "dataset.test_size=8", "dataset.height=32",
        "dataset.width=32", "trainer.batch_size=8", "trainer.progress=false", "logger=none"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_metrics_summary_and_checkpoints(tmp_path):
    summary = run(compose_cfg([*TINY, "trainer.epochs=2"]), tmp_path)
    lines = rows(tmp_path)
    assert [(r["epoch"], r["split"]) for r in lines] == [
        (e, s) for e in range(2) for s in ("train", "val", "test")]
    train = lines[0]
    for task in ("segmentation", "depth", "normal"):
        assert f"loss/{task}" in train and train[f"weight/{task}"] == 1.0
    assert train["epoch_time_s"] > 0
    for metric in ("segmentation/miou", "segmentation/pix_acc", "depth/abs_err", "depth/rel_err",
                   "normal/mean", "normal/median", "normal/within_11.25", "normal/within_22.5", "normal/within_30"):
        assert metric in lines[1], metric
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["best"]["split"] == "val" and on_disk["final"]["test"]["segmentation/miou"] >= 0
    assert on_disk["num_parameters"] > 0
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["tasks"] == ["segmentation", "depth", "normal"]


def test_resume_continues_exactly(tmp_path):
    full = run(compose_cfg([*TINY, "trainer.epochs=3"]), tmp_path / "full")
    run(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path / "cut")
    resumed = run(compose_cfg([*TINY, "trainer.epochs=3", "trainer.resume=true"]), tmp_path / "cut")
    assert resumed["final"] == full["final"]  # bitwise: same floats from the same computation
    assert [r["epoch"] for r in rows(tmp_path / "cut")] == [r["epoch"] for r in rows(tmp_path / "full")]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*last.pt"):
        run(compose_cfg([*TINY, "trainer.resume=true"]), tmp_path)


BAD_INPUTS = [  # the README's bad-input table: each case fails before training with this message
    (["trainer.batch_size=0"], "trainer.batch_size must be a positive integer, got 0"),
    (["trainer.epochs=abc"], "trainer.epochs must be a positive integer, got 'abc'"),
    (["trainer.optimizer.lr=-0.1"], "trainer.optimizer/scheduler: Invalid learning rate: -0.1"),
    (["selection.monitor=depth/nope"], "selection.monitor='depth/nope' is not a metric of these tasks"),
    (["trainer.eval_splits=[nope]"], "trainer.eval_splits: 'nope' is not a split"),
    (["dataset.tasks=[depth,edges]"], r"unknown task\(s\) \['edges'\]"),
    (["dataset.tasks=[]"], "the task list is empty"),
    (["dataset.train_size=0"], "train_size"),
    (["weighting=dwa", "weighting.temperature=0"], "temperature"),
    (["weighting=gradnorm", "weighting.alpha=-1"], "alpha"),
    (["backbone=mtan_segnet", "backbone.width=0.0625", "weighting=mgda_ub"], "representation"),
    (["mode=nope"], r"mode='nope': expected one of \['train', 'eval', 'predict'\]"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_values_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(compose_cfg([*TINY, *overrides]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_single_task_and_two_task_runs(tmp_path):
    for tasks in ("[depth]", "[segmentation,normal]"):
        summary = run(compose_cfg([*TINY, "trainer.epochs=1", f"dataset.tasks={tasks}"]), tmp_path / tasks)
        assert summary["tasks"] == tasks.strip("[]").split(",")


def _baselines(bundle) -> tuple[float, float]:
    """mIoU of predicting the training split's majority class; abs error of its mean depth."""
    train = [bundle.train[i] for i in range(len(bundle.train))]
    labels = torch.cat([s["segmentation"].flatten() for s in train])
    majority = int(torch.bincount(labels[labels >= 0]).argmax())
    depths = torch.cat([s["depth"].flatten() for s in train])
    mean_depth = float(depths[depths > 0].mean())
    test = [bundle.eval_splits["test"][i] for i in range(len(bundle.eval_splits["test"]))]
    from okd.tasks import Depth, Segmentation
    seg, dep = Segmentation(bundle.num_classes).metric(), Depth().metric()
    for s in test:
        seg.update(torch.full_like(s["segmentation"], majority)[None], s["segmentation"][None])
        dep.update(torch.full_like(s["depth"], mean_depth)[None], s["depth"][None])
    return seg.compute()["miou"], dep.compute()["abs_err"]


def test_synthetic_scenes_are_learnable(tmp_path):
    """A short EW run beats the majority-class and mean-depth predictors clearly."""
    cfg = compose_cfg(["trainer.progress=false", "logger=none", "trainer.epochs=6"])
    trainer, ctx = build(cfg, tmp_path)
    majority_miou, mean_depth_err = _baselines(ctx.data)
    summary = trainer.fit(ctx)
    test = summary["final"]["test"]
    assert test["segmentation/miou"] > 1.8 * majority_miou, (test, majority_miou)
    assert test["depth/abs_err"] < 0.75 * mean_depth_err, (test, mean_depth_err)
    assert test["normal/mean"] < 45.0


def test_wandb_offline_run_reads_back(tmp_path):
    cfg = compose_cfg([*TINY, "trainer.epochs=2", "logger=wandb", "logger.mode=offline", "name=wb-test"])
    summary = run(cfg, tmp_path, choices={"weighting": "ew"})
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "the W&B run must live inside the run dir"
    record = read_run(files[0])
    assert record["run"].run_group == "wb-test"
    assert list(record["run"].tags) == ["synthetic", "segnet", "ew", "kd-none"]
    # the chosen options and the method as plain keys; the whole config without _target_ noise
    assert (record["config"]["weighting"], record["config"]["method"], record["config"]["seed"]) == ("ew", "ew", 0)
    assert record["config"]["config"]["trainer"]["epochs"] == 2
    assert "_target_" not in json.dumps(record["config"])
    # charts over epochs; run tables summarise each metric by its best value in its own direction
    metrics = record["metrics"]
    assert metrics["*"].step_metric == "epoch"
    assert metrics["test/segmentation/miou"].summary.max and not metrics["test/segmentation/miou"].summary.min
    assert metrics["val/depth/abs_err"].summary.min and metrics["val/loss"].summary.min
    history = record["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])  # epoch 1, test
    assert history[-1]["test/segmentation/miou"] == pytest.approx(last["segmentation/miou"])
    assert "train/weight/depth" in history[-1]
    panels = {k.rsplit("/", 1)[0] for k in history[-1] if k.startswith("test/panel/")}
    assert len(panels) == 4  # fixed samples of the report split, every epoch
    assert all(history[-1][f"{p}/_type"] == "image-file" for p in panels)
    assert record["summary"]["final/test/depth/abs_err"] == pytest.approx(summary["final"]["test"]["depth/abs_err"])
    assert summary["wandb"]["id"] == record["run"].run_id


@pytest.mark.parametrize("method", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "weighting").glob("*.yaml")))
def test_every_weighting_trains_through_the_real_loop(tmp_path, method):
    """One tiny epoch per method: the interface the trainer drives is the one the methods implement."""
    trainer, ctx = build(compose_cfg([*TINY, f"weighting={method}", "trainer.epochs=1"]), tmp_path)
    if ctx.weighting.needs_reference_losses:
        with pytest.raises(ValueError, match="needs teacher losses"):
            trainer.fit(ctx)
        return
    summary = trainer.fit(ctx)
    train = rows(tmp_path)[0]
    weights = [train[f"weight/{t}"] for t in ("segmentation", "depth", "normal")]
    assert all(np.isfinite(weights)), weights
    assert np.isfinite(summary["final"]["test"]["loss"])


def test_summary_records_selections_and_deltas_against_stl_runs(tmp_path):
    from okd.metrics import deltas
    from okd.tasks import build_tasks, metric_directions

    stl = []
    for task in ("segmentation", "depth"):
        run(compose_cfg([*TINY, "trainer.epochs=1", f"dataset.tasks=[{task}]"]), tmp_path / task)
        stl.append(str(tmp_path / task))
    single = json.loads((tmp_path / "depth" / "summary.json").read_text())
    assert single["delta"]["base"] is None and "single-task" in single["delta"]["reason"]
    summary = run(compose_cfg([*TINY, "trainer.epochs=3", "dataset.tasks=[segmentation,depth]",
                               "selection.last_n=2", f"delta.stl_runs=[{stl[0]},{stl[1]}]"]), tmp_path / "mtl")
    sel = summary["selection"]
    assert sel["last"]["epoch"] == 2 and sel["last_n_mean"]["epochs"] == [1, 2]
    assert sel["best"]["chosen_on"] == "val" and sel["best"]["split"] == "test"
    history = [r for r in rows(tmp_path / "mtl") if r["split"] == "test"]
    assert sel["last_n_mean"]["metrics"]["depth/abs_err"] == pytest.approx(
        (history[1]["depth/abs_err"] + history[2]["depth/abs_err"]) / 2)
    base = {**json.loads((tmp_path / "segmentation" / "summary.json").read_text())["selection"]["best"]["metrics"],
            **single["selection"]["best"]["metrics"]}
    assert summary["delta"]["base"]["values"] == base
    directions = metric_directions(build_tasks(["segmentation", "depth"], 7))
    for name in ("best", "last", "last_n_mean"):
        assert summary["delta"][name] == pytest.approx(deltas(sel[name]["metrics"], base, directions))


def test_delta_from_reference_numbers_and_none_without_a_base(tmp_path):
    summary = run(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path / "none")
    assert summary["delta"]["base"] is None and "no single-task base" in summary["delta"]["reason"]
    summary = run(compose_cfg([*TINY, "trainer.epochs=1", "reference=nyuv2_segnet_mtan"]), tmp_path / "ref")
    assert summary["delta"]["base"]["kind"] == "reference"
    assert summary["delta"]["best"]["delta_m"] < 0  # a one-epoch toy is far below the published STL


def test_eval_mode_reproduces_training_time_metrics(tmp_path):
    run(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path / "train")
    for ckpt in ("last.pt", "best.pt"):
        out = run(compose_cfg([*TINY, "mode=eval", f"ckpt={tmp_path / 'train' / 'checkpoints' / ckpt}"]),
                  tmp_path / f"eval-{ckpt}")
        assert out["matches_training_time_metrics"] == {"val": "identical", "test": "identical"}
        recorded = rows(tmp_path / "train")[-1]  # epoch 0, test
        assert out["metrics"]["test"]["segmentation/miou"] == recorded["segmentation/miou"]
        assert json.loads((tmp_path / f"eval-{ckpt}" / "eval.json").read_text())["epoch"] == 0


def test_eval_mode_names_what_differs_in_a_mismatched_checkpoint(tmp_path):
    run(compose_cfg([*TINY, "trainer.epochs=1"]), tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    # overrides given on the command line apply on top of the checkpoint's own config
    with pytest.raises(ValueError, match="shape differs"):
        run(compose_cfg([*TINY, "mode=eval", f"ckpt={ckpt}", "backbone.width=0.25"]), tmp_path / "e1",
            overrides=["backbone.width=0.25"])
    with pytest.raises(ValueError, match=r"trained on tasks \['segmentation', 'depth', 'normal'\]"):
        run(compose_cfg([*TINY, "mode=eval", f"ckpt={ckpt}", "dataset.tasks=[depth]"]), tmp_path / "e2",
            overrides=["dataset.tasks=[depth]"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(compose_cfg([*TINY, "mode=eval", f"ckpt={tmp_path / 'nope.pt'}"]), tmp_path / "e3")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        run(compose_cfg([*TINY, "mode=eval"]), tmp_path / "e4")


def test_bf16_and_channels_last_train_and_evaluate(tmp_path):
    summary = run(compose_cfg([*TINY, "trainer.epochs=1", "trainer.precision=bf16", "trainer.channels_last=true",
                               "weighting=pcgrad"]), tmp_path)
    assert np.isfinite(summary["final"]["test"]["loss"])
    with pytest.raises(ValueError, match=r"trainer.precision must be one of \['32', 'bf16', '16'\], got 8"):
        build(compose_cfg([*TINY, "trainer.precision=8"]), tmp_path / "x")


@pytest.mark.parametrize("method", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "weighting").glob("*.yaml")))
def test_every_weighting_trains_under_okd(tmp_path, method):
    """The distillation loss joins every method's objective (the extra_loss of Weighting.backward)."""
    summary = run(compose_cfg([*TINY, "kd=okd", "kd.warmup_epochs=0", f"weighting={method}", "trainer.epochs=1",
                               "backbone.width=0.0625", "trainer.log_images=0"]), tmp_path)
    train = rows(tmp_path)[0]
    assert np.isfinite(train["afd/total"]) and train["afd/total"] > 0
    assert all(np.isfinite(train[f"weight/{t}"]) for t in ("segmentation", "depth", "normal"))
    assert summary["delta"]["base"]["kind"] == "teachers"


def test_single_task_runs_of_the_same_sweep_become_the_base(tmp_path):
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # what Hydra writes at a sweep's root
    for i, task in enumerate(("segmentation", "depth")):
        run(compose_cfg([*TINY, "trainer.epochs=1", f"dataset.tasks=[{task}]"]), sweep / str(i),
            choices={"backbone": "segnet"})
    summary = run(compose_cfg([*TINY, "trainer.epochs=1", "dataset.tasks=[segmentation,depth]"]), sweep / "2",
                  choices={"backbone": "segnet"})
    assert summary["delta"]["base"]["kind"] == "sweep"
    (sweep / "multirun.yaml").unlink()  # the same dirs outside a sweep are not used
    summary = run(compose_cfg([*TINY, "trainer.epochs=1", "dataset.tasks=[segmentation,depth]"]), sweep / "3",
                  choices={"backbone": "segnet"})
    assert summary["delta"]["base"] is None


def test_metric_comparison_identical_within_tolerance_or_different():
    from okd.engine.eval_predict import compare_metrics

    then = {"depth/abs_err": 0.5, "segmentation/miou": 40.0, "normal/within_11.25": 0.0, "x": float("nan")}
    assert compare_metrics(dict(then), then) == "identical"
    close = {**then, "depth/abs_err": 0.5 * (1 + 2e-7), "segmentation/miou": 40.0 * (1 - 5e-6),
             "normal/within_11.25": 1e-9}
    assert compare_metrics(close, then) == (
        "equal within rel 1e-05 / abs 1e-08 (largest difference: segmentation/miou 40.0 at training time, "
        f"{40.0 * (1 - 5e-6)!r} now)")
    far = {**close, "depth/abs_err": 0.5001}
    assert compare_metrics(far, then) == ("differ beyond rel 1e-05 / abs 1e-08 (largest: depth/abs_err 0.5 at "
                                          "training time, 0.5001 now)")
    assert compare_metrics({**then, "x": 1.0}, then).startswith("differ beyond rel 1e-05 / abs 1e-08 (largest: x nan")
    assert compare_metrics(then, None) == "not recorded in the checkpoint"


def test_threads_default_to_what_the_job_was_given():
    from okd.engine.device import default_threads

    assert default_threads({"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}) == 3  # launchers set it
    assert default_threads({"SLURM_CPUS_PER_TASK": "8"}) == 8
    assert default_threads({}) == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="trainer.threads must be a positive integer or null"):
        Trainer(optimizer=torch.optim.SGD, threads=0)
