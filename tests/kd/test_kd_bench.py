"""``python -m okd.kd.bench`` stays an alias of the OKD part of ``python -m okd.bench``."""
from __future__ import annotations

import json

import pytest
import torch

from okd.kd import bench as kd_bench


@pytest.fixture(autouse=True)
def keep_threads():
    """The benchmark sets torch's thread count (--threads); give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_alias_times_only_okd_against_its_components(tmp_path, capsys):
    out = tmp_path / "bench.json"
    kd_bench.main(["--size", "32x32", "--batch", "2", "--steps", "1", "--rounds", "1", "--warmup", "0",
                   "--threads", "1", "--device", "cpu", "--weighting", "ew", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["setup"]["okd_weighting"] == "ew" and result["setup"]["width"] == 0.125  # the alias's default
    (variant,) = result["variants"]
    rows = {r["config"]: r for r in variant["rows"]}
    assert {r["part"] for r in variant["rows"]} == {"okd"}
    assert rows["okd"]["vs"]["components"] == pytest.approx(rows["okd"]["ms"] / rows["sum of components"]["ms"])
    assert "OKD step vs its bare components" in capsys.readouterr().out


def test_alias_defaults_come_first_and_the_former_option_is_renamed():
    assert kd_bench.translate(["--weighting=uw", "--width", "1.0"]) == \
        [*kd_bench.DEFAULTS, "--okd-weighting=uw", "--width", "1.0"]
    args = kd_bench.bench.parse_args(kd_bench.translate(["--weighting", "dwa", "--size", "64x64"]))
    assert (args.methods, args.eval, args.okd, args.okd_weighting, args.size) == ("none", False, True, "dwa", "64x64")
