"""README's task-weighting tables list exactly the options of conf/weighting/.

Adding a weighting is its class, its YAML and its test file; this test then says which README rows
to add (the zoo tables of "Task weighting" and the DDP status table of the multi-GPU section).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "weighting"
OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))
README = (ROOT / "README.md").read_text()


def _section(heading: str) -> str:
    start = README.index(f"\n{heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start: end if end >= 0 else None]


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]


def _needs_representation(option: str) -> bool:
    cfg = OmegaConf.create({"seed": 0, "weighting": OmegaConf.load(CONF / f"{option}.yaml")})
    return instantiate(cfg.weighting, _convert_="all").needs_representation


def test_zoo_tables_have_one_row_per_option():
    configs = [c for row in _table_rows(_section("## Task weighting"))
               for c in re.findall(r"`weighting=([a-z0-9_]+)`", row)]
    assert sorted(configs) == OPTIONS, "README's task-weighting tables and conf/weighting/ differ"


@pytest.fixture(scope="module")
def ddp_rows() -> dict[str, set[str]]:
    rows = [r for r in _table_rows(_section("## Multi-GPU training of one run (torchrun)"))
            if r.startswith(("| supported", "| **refused"))]
    return {r.split("|")[1].strip(): set(re.findall(r"`([a-z0-9_]+)`", r.split("|")[2])) - {"needs_representation"}
            for r in rows}


def test_ddp_table_names_every_option_and_nothing_else(ddp_rows):
    assert set().union(*ddp_rows.values()) == set(OPTIONS)


def test_ddp_table_refuses_exactly_the_representation_level_options(ddp_rows):
    refused = next(names for status, names in ddp_rows.items() if status.startswith("**refused"))
    supported = set().union(*(names for status, names in ddp_rows.items() if status.startswith("supported")))
    for option in OPTIONS:
        if _needs_representation(option):
            assert option in refused, option
        else:
            assert option in supported, option
