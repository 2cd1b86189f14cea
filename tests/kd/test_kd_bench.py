"""okd.kd.bench runs end to end on a tiny configuration and reports the OKD / bare ratio."""
from __future__ import annotations

import json

import pytest
import torch

from okd.kd.bench import main


@pytest.fixture(autouse=True)
def keep_threads():
    """The benchmark sets torch's thread count (--threads); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_reports_the_ratio_to_bare_student_plus_teachers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--size", "32x32", "--batch", "2", "--steps", "1", "--rounds", "1", "--warmup", "1",
          "--threads", "1", "--device", "cpu", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"okd", "bare_student+teachers", "bare_student"}
    assert result["setup"]["teachers"] == 3
    assert result["ratio"] == rows["okd"]["vs_floor"] > 0
    assert rows["bare_student+teachers"]["vs_floor"] == 1.0
    assert "OKD step / (student step + 3 teacher steps" in capsys.readouterr().out
