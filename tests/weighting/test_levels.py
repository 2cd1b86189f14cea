"""The level switch (parameters / representation) and the weighting package's own conventions.

One spelling, ``level=``: a ``<name>_ub.yaml`` preset is ``<name>.yaml`` with ``level:
representation``; the old spellings (MGDA's ``use_representation``, the ``AlignedMTLUB`` class)
still load, with a FutureWarning naming ``level``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from okd.weighting.alignedmtl import AlignedMTL, AlignedMTLUB
from okd.weighting.base import GradientWeighting
from okd.weighting.mgda import MGDA

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "weighting"
PRESETS = sorted(p.stem for p in CONF.glob("*_ub.yaml"))


def test_there_are_presets():
    assert {"alignedmtl_ub", "mgda_ub"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_ub_preset_is_its_method_at_the_representation_level(name):
    preset = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    base = OmegaConf.to_container(OmegaConf.load(CONF / f"{name.removesuffix('_ub')}.yaml"))
    assert preset.pop("level") == "representation" and base.pop("level") == "parameters"
    assert preset["_target_"] == base["_target_"]
    assert set(preset) == set(base)


@pytest.mark.parametrize("cls", [AlignedMTL, MGDA])
def test_level_chooses_what_the_trainer_passes(cls):
    assert not cls().needs_representation
    assert cls(level="representation").needs_representation
    with pytest.raises(ValueError, match="level must be one of"):
        cls(level="features")


def test_mgda_use_representation_is_deprecated_for_level():
    for old, level in ((True, "representation"), (False, "parameters")):
        with pytest.warns(FutureWarning, match="use_representation is deprecated, use level: " + level):
            mgda = MGDA(use_representation=old)
        assert mgda.level == level and mgda.needs_representation == old
        assert mgda.use_representation == old
    with pytest.warns(FutureWarning):
        assert MGDA(use_representation=True, level="representation").level == "representation"
    with pytest.raises(ValueError, match="contradicts level"):
        MGDA(use_representation=False, level="representation")


def test_alignedmtl_ub_class_is_deprecated_for_level():
    with pytest.warns(FutureWarning, match="level='representation'"):
        method = AlignedMTLUB(scale_mode="median")
    assert isinstance(method, AlignedMTL)
    assert (method.level, method.scale_mode, method.needs_representation) == ("representation", "median", True)


def test_gradient_methods_declare_their_levels():
    for cls in (AlignedMTL, MGDA):
        assert cls.levels[0] == "parameters" and "representation" in cls.levels
    assert GradientWeighting.levels == ("parameters",)


def test_no_module_imports_another_modules_private_names():
    for path in sorted((ROOT / "okd" / "weighting").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__future__"]
                assert not private, f"{path.name} imports {private} from {node.module}: make them public"
