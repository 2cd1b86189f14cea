"""Properties every weighting method has, checked on every option of conf/weighting/ and on the
variants that take other code paths (``toys.METHODS``).

* training the float64 toy lowers all three losses;
* the extra (distillation) loss adds its own gradient to the shared parameters and nothing to
  the heads (docs/weighting.md#the-interface);
* a checkpoint round trip continues exactly as the uninterrupted method
  (docs/weighting.md#state-and-checkpoints);
* each YAML targets its class and lists every argument with the class default.

Each method's own test file checks its formula: hand cases, the worked examples of
docs/weighting.md and the gradients it writes on the toy.
"""
from __future__ import annotations

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from toys import CONF, METHODS, NAMES, OPTIONS, assert_yaml_matches_defaults, check_descent, check_extra_loss, check_round_trip

#: presets: another option's class with other values (``mgda_ub`` is ``mgda`` at the representation
#: level, tests/weighting/test_levels.py; ``otw_v1`` is ``otw`` as first released)
PRESETS = {o for o in OPTIONS if any(o.startswith(base + "_") for base in OPTIONS)}
#: learning rates other than 0.1 for the descent check
LR = {}


def test_every_option_is_a_method():
    assert len(OPTIONS) >= 21 and set(OPTIONS) <= set(METHODS)


@pytest.mark.parametrize("name", NAMES)
def test_training_decreases_every_loss(name):
    check_descent(METHODS[name], lr=LR.get(name, 0.1))


@pytest.mark.parametrize("name", NAMES)
def test_extra_loss_adds_its_own_gradient(name):
    check_extra_loss(METHODS[name])


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_continues_the_run(name):
    check_round_trip(METHODS[name])


@pytest.mark.parametrize("option", sorted(set(OPTIONS) - PRESETS))
def test_yaml_lists_every_argument_with_its_default(option):
    target = OmegaConf.load(CONF / f"{option}.yaml")["_target_"]
    assert_yaml_matches_defaults(option, get_class(target))
