"""delta_m / delta_p (docs/metrics.md#delta_m-and-delta_p) on hand-computed examples, both sign directions."""
from __future__ import annotations

import pytest

from okd.metrics import delta_m, delta_p, deltas

HIB = {"segmentation/miou": True, "segmentation/pix_acc": True, "depth/abs_err": False}
BASE = {"segmentation/miou": 40.0, "segmentation/pix_acc": 60.0, "depth/abs_err": 0.4}


def test_hand_computed_example():
    values = {"segmentation/miou": 44.0, "segmentation/pix_acc": 60.0, "depth/abs_err": 0.5}
    # changes: miou +0.10, pix_acc 0, abs_err -(0.5-0.4)/0.4 = -0.25 (lower is better)
    assert delta_m(values, BASE, HIB) == pytest.approx(100 * (0.10 + 0 - 0.25) / 3)
    # per task: segmentation (0.10 + 0) / 2 = 0.05, depth -0.25 -> mean -0.10
    assert delta_p(values, BASE, HIB) == pytest.approx(-10.0)


def test_lower_error_is_positive_and_equal_results_are_zero():
    better = dict(BASE, **{"depth/abs_err": 0.3})
    assert delta_m(better, BASE, HIB) == pytest.approx(100 * 0.25 / 3)
    assert delta_p(better, BASE, HIB) == pytest.approx(100 * 0.25 / 2)
    assert deltas(BASE, BASE, HIB) == {"delta_m": 0.0, "delta_p": 0.0}


def test_metrics_missing_from_the_base_are_left_out_and_none_shared_is_an_error():
    values = dict(BASE, **{"normal/mean": 20.0})
    assert delta_m(values, BASE, {**HIB, "normal/mean": False}) == 0.0
    with pytest.raises(ValueError, match="no metric"):
        delta_m({"normal/mean": 1.0}, BASE, {"normal/mean": False})
    with pytest.raises(ValueError, match="undefined"):
        delta_m(BASE, dict(BASE, **{"depth/abs_err": 0.0}), HIB)


def test_the_directions_here_are_the_tasks_own():
    from okd.tasks import metric_directions

    assert HIB.items() <= metric_directions().items()


# ---------------------------------------------------------------------------------------------
# The base: a machine-readable kind, single-task numbers read from summary.json (old files too)
# ---------------------------------------------------------------------------------------------
def stl_run(path, task: str, metrics: dict, **extra):
    """A single-task run dir with a summary.json as okd wrote it before okd/results.py (no schema)."""
    import json

    path.mkdir(parents=True)
    summary = {"dataset": "synthetic", "tasks": [task], "choices": {"backbone": "segnet"},
               "selection": {"best": {"epoch": 1, "split": "test", "metrics": metrics}}, **extra}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_resolve_base_kinds_in_order(tmp_path):
    from okd.metrics import resolve_base
    from okd.results import Base

    seg = stl_run(tmp_path / "sweep" / "0", "segmentation", {"segmentation/miou": 40.0, "depth/abs_err": 9.0})
    depth = stl_run(tmp_path / "sweep" / "1", "depth", {"depth/abs_err": 0.4})
    me = tmp_path / "sweep" / "2"
    common = dict(run_dir=me, tasks=["segmentation", "depth"], dataset="synthetic", backbone="segnet")
    teachers = resolve_base(**common, teacher_values={"depth/abs_err": 0.3}, stl_runs=[seg], reference=BASE)
    assert teachers == Base("teachers", teachers.source, {"depth/abs_err": 0.3})
    given = resolve_base(**common, teacher_values={}, stl_runs=[seg, depth], reference=BASE)
    # each run gives the numbers of its own task only
    assert given.kind == "stl_runs" and given.values == {"segmentation/miou": 40.0, "depth/abs_err": 0.4}
    assert resolve_base(**common, teacher_values={}, stl_runs=[], reference=BASE).kind == "reference"
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}\n")
    (tmp_path / "sweep" / "3").mkdir()
    (tmp_path / "sweep" / "3" / "summary.json").write_text("{}")  # not a run: left out
    sweep = resolve_base(**common, teacher_values={}, stl_runs=[], reference=BASE)
    assert sweep.kind == "sweep" and sweep.values == given.values and str(seg) in sweep.source
    assert resolve_base(**{**common, "backbone": "other"}, teacher_values={}, stl_runs=[], reference=None) is None


def test_the_sweep_base_is_the_mean_over_the_seeds_of_its_single_task_runs(tmp_path):
    """Two seeds of each single-task run in the sweep: the base is their mean, not the last one read."""
    from okd.metrics import sweep_stl_values

    for i, (task, metrics) in enumerate([("segmentation", {"segmentation/miou": 40.0}),
                                         ("segmentation", {"segmentation/miou": 50.0}),
                                         ("depth", {"depth/abs_err": 0.4}), ("depth", {"depth/abs_err": 0.6})]):
        stl_run(tmp_path / "sweep" / str(i), task, metrics)
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}\n")
    values, used = sweep_stl_values(tmp_path / "sweep" / "9", "synthetic", "segnet", ["segmentation", "depth"])
    assert values == pytest.approx({"segmentation/miou": 45.0, "depth/abs_err": 0.5}) and len(used) == 4


def test_stl_runs_that_are_not_single_task_runs_are_one_line_errors(tmp_path):
    from okd.metrics import stl_values_from_runs

    with pytest.raises(FileNotFoundError, match=r"^delta.stl_runs: no summary.json in .*nope$"):
        stl_values_from_runs([tmp_path / "nope"])
    mtl = stl_run(tmp_path / "mtl", "depth", {"depth/abs_err": 0.4})
    (mtl / "summary.json").write_text((mtl / "summary.json").read_text().replace('["depth"]', '["depth", "normal"]'))
    with pytest.raises(ValueError, match="trained tasks .*a single-task run is expected"):
        stl_values_from_runs([mtl])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "summary.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"^delta.stl_runs: .*summary.json unreadable") as err:
        stl_values_from_runs([tmp_path / "junk"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no 'last' model selection"):
        stl_values_from_runs([stl_run(tmp_path / "d", "depth", {"depth/abs_err": 0.4})], selection="last")
