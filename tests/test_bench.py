"""The benchmark harness runs and reports ratios (no assertion on times: benchmarks are not tests)."""
from __future__ import annotations

import json

from okd.bench import main


def test_bench_reports_bare_and_methods(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["--methods", "ew,pcgrad", "--steps", "1", "--rounds", "1", "--warmup", "1", "--size", "32x32",
          "--batch", "2", "--width", "0.0625", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [r["config"] for r in result["rows"]] == ["bare", "ew", "pcgrad"]
    ew = result["rows"][1]
    assert ew["vs_ew"] == 1.0 and ew["step_ms"] > 0 and result["rows"][0]["vs_bare"] == 1.0
    assert "| pcgrad |" in capsys.readouterr().out
