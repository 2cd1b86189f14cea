"""Properties every weighting method has, checked on every option of conf/weighting/ and on the
variants that take other code paths (``toys.METHODS``).

* a gradient method's backward writes what its ``combine`` (``combine_representation`` at the
  representation level) returns on independent per-task gradients, the heads' gradients weighted
  by ``head_weights`` (raw when None), and keeps the same state (docs/weighting.md#the-interface);
* training the float64 toy lowers all three losses;
* the extra (distillation) loss adds its own gradient to the shared parameters and nothing to
  the heads (docs/weighting.md#the-interface);
* a checkpoint round trip continues exactly as the uninterrupted method
  (docs/weighting.md#state-and-checkpoints);
* each YAML targets its class and lists every argument with the class default;
* a NaN for any float argument is refused when the method is built, with the message format of
  okd/weighting/arguments.py naming the argument.

Each method's own test file checks its formula: hand cases, the worked examples of
docs/weighting.md and the gradients it writes on the toy.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from okd.weighting.base import GradientWeighting
from toys import (
    CONF,
    METHODS,
    NAMES,
    OPTIONS,
    TanhToy,
    assert_yaml_matches_defaults,
    bound_method,
    check_descent,
    check_extra_loss,
    check_round_trip,
    step,
)

#: presets: another option's class with other values (``mgda_ub`` is ``mgda`` at the representation
#: level, tests/weighting/test_levels.py; ``otw_v1`` is ``otw`` as first released)
PRESETS = {o for o in OPTIONS if any(o.startswith(base + "_") for base in OPTIONS)}
#: SGD steps of the descent check: at lr 0.1 every method lowers all three losses by 15 % or more
#: within 5 steps (at 10, by 25 %); more steps only cost time
DESCENT_STEPS = 10
#: gradient methods that use the base class's backward as it is (DB-MTL, IMTL and Nash-MTL add a
#: rule of their own, tested in their files)
PLAIN_GRADIENT = [n for n in NAMES if isinstance(m := METHODS[n](), GradientWeighting)
                  and type(m).backward is GradientWeighting.backward]
#: every class of conf/weighting/, once
CLASSES = sorted({get_class(OmegaConf.load(CONF / f"{o}.yaml")["_target_"]) for o in OPTIONS},
                 key=lambda cls: cls.__name__)
#: (class, argument) for every argument whose default is a float
FLOAT_ARGUMENTS = [(cls, name) for cls in CLASSES for name, p in inspect.signature(cls).parameters.items()
                   if isinstance(p.default, float)]


def test_every_option_is_a_method():
    assert len(OPTIONS) >= 21 and set(OPTIONS) <= set(METHODS)


def test_there_are_plain_gradient_methods():
    expected = {"pcgrad", "gradvac", "graddrop", "cagrad", "mgda", "mgda_ub", "upgrad", "alignedmtl"}
    assert expected <= set(PLAIN_GRADIENT)


@pytest.mark.parametrize("name", PLAIN_GRADIENT)
def test_backward_writes_what_combine_returns(name):
    toy = TanhToy()
    method, twin = bound_method(METHODS[name], toy), bound_method(METHODS[name], toy)
    ref = toy.reference()
    if twin.level == "representation":
        grad_z, weights = twin.combine_representation(ref["Z"], ref["z"], ref["losses"])
        expected = toy.encoder_vjp(grad_z)
    else:
        expected, weights = twin.combine(ref["G"], ref["losses"])
    head_weights = twin.head_weights(weights, ref["losses"])
    if head_weights is None:
        head_weights = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(step(method, toy), weights)
    torch.testing.assert_close(toy.shared_grad(), expected, rtol=1e-10, atol=1e-12)
    heads = head_weights.to(ref["heads"]) @ ref["heads"]
    torch.testing.assert_close(toy.head_grad(), heads, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(method.state_dict(), twin.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_training_decreases_every_loss(name):
    check_descent(METHODS[name], steps=DESCENT_STEPS, lr=0.1)


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


@pytest.mark.parametrize("cls, argument", FLOAT_ARGUMENTS, ids=lambda x: getattr(x, "__name__", x))
def test_a_nan_argument_is_refused_by_name(cls, argument):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: {argument} must be .*, got nan$"):
        cls(**{argument: math.nan})
