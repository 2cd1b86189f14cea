"""What every backbone promises (okd/models/base.py): predictions at the input size for any task set,
named features from the same pass, an honest shared/task split, gradients everywhere, one pass per layer."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.models.backbone_zoo import NAMES, PER_TASK_SHARED, build, hard_sharing
from okd.models.common import NoSharedRepresentation

TASK_SETS = [
    (("segmentation",), 13), (("depth",), 7),
    (("segmentation", "depth"), 7), (("depth", "normal"), 13),
    (("segmentation", "depth", "normal"), 13), (("segmentation", "depth", "normal"), 7),
]


def batch(tasks, num_classes, b=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    targets = {
        "segmentation": torch.randint(-1, num_classes, (b, h, w), generator=g),
        "depth": torch.rand(b, 1, h, w, generator=g) + 0.1,
        "normal": torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1),
    }
    return x, {t.name: targets[t.name] for t in tasks}


def losses(model, x, targets):
    """Predictions and the list of task losses (separate graphs: indexing a stacked tensor would
    connect every loss to every head)."""
    out = model(x)
    return out, [t.loss(out.predictions[t.name], targets[t.name]) for t in model.tasks]


def training_losses(name):
    """A fresh model of ``name`` in training mode (seed 0) and its task losses on a fixed batch."""
    torch.manual_seed(0)
    model = build(name).train()
    x, targets = batch(model.tasks, 7)
    return model, losses(model, x, targets)[1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task_names, num_classes", TASK_SETS)
def test_predictions_and_features_for_any_task_set(name, task_names, num_classes):
    model = build(name, task_names, num_classes).eval()
    h, w = (32, 64) if name != "vit_tiny" else (24, 40)  # the ViT resizes to its img_size and back
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    expected = {"segmentation": num_classes, "depth": 1, "normal": 3}
    assert {k: tuple(v.shape) for k, v in out.predictions.items()} == {
        t: (2, expected[t], h, w) for t in task_names}
    representation = {model.representation_key} if hard_sharing(name, model) else set()
    assert set(out.features) == set(model.feature_names) | representation
    for key, f in out.features.items():
        assert f.dim() == 4 and f.shape[0] == 2, key
    if "normal" in out.predictions:
        norms = out.predictions["normal"].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # unit length after upsampling


@pytest.mark.parametrize("name", NAMES)
def test_shared_and_task_parameters_follow_the_graph(name):
    """Shared = used by more than one task's loss, task = used by exactly one; together all parameters."""
    model, per_task = training_losses(name)
    params = [p for p in model.parameters() if p.requires_grad]
    users = Counter()
    for k in range(len(model.tasks)):
        grads = torch.autograd.grad(per_task[k], params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None:
                users[id(p)] += 1
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    assert not shared & task
    assert shared | task == {id(p) for p in params}
    assert all(users[id(p)] >= 1 for p in params), "every parameter serves some task"
    assert shared == {id(p) for p in params if users[id(p)] > 1}
    assert task == {id(p) for p in params if users[id(p)] == 1}
    last = model.last_shared_parameters()
    assert last and {id(p) for p in last} <= shared


@pytest.mark.parametrize("name", NAMES)
def test_sum_of_losses_reaches_every_parameter(name):
    model, per_task = training_losses(name)
    sum(per_task).backward()
    # a bias right before a training-mode batch norm is in the graph, but the norm subtracts the batch
    # mean, so its exact gradient is 0 (what is computed is rounding noise, or exactly 0 on some CPUs)
    zero_by_design = _biases_before_batch_norm(model)
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if pname not in zero_by_design:
            assert p.grad.abs().sum() > 0, pname


def _biases_before_batch_norm(model: torch.nn.Module) -> set[str]:
    """Names of the biases of layers directly followed by a BatchNorm in an nn.Sequential."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.Sequential):
            layers = list(module.named_children())
            for (name, layer), (_, after) in zip(layers, layers[1:]):
                if isinstance(after, torch.nn.modules.batchnorm._BatchNorm) and getattr(layer, "bias", None) is not None:
                    names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


@pytest.mark.parametrize("name", NAMES)
def test_each_layer_runs_once_per_forward(name):
    """One forward pass = each parameterised layer once (MTAN's shared attention encoders once per task)."""
    model = build(name).train()
    calls: Counter = Counter()
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: calls.update([n]))
             for n, m in model.named_modules()
             if next(m.children(), None) is None and next(m.parameters(), None) is not None]  # leaf layers
    x, _ = batch(model.tasks, 7)
    model(x)
    for h in hooks:
        h.remove()
    repeated = PER_TASK_SHARED.get(name, ())
    for n, count in calls.items():
        expected = len(model.tasks) if n.startswith(repeated) and repeated else 1
        assert count == expected, (n, count)
    assert len(calls) == len(hooks), "every parameterised layer takes part in the forward pass"


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_decrease_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = build(name).train()
    x, targets = batch(model.tasks, 7)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def total() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout / drop-path masks for every evaluation
        return sum(losses(model, x, targets)[1])

    first = float(total().detach())
    for _ in range(8):
        optimizer.zero_grad()
        total().backward()
        optimizer.step()
    after = float(total().detach())
    assert after < 0.95 * first, (after, first)  # random targets: memorising only


@pytest.mark.parametrize("name", NAMES)
def test_shared_representation_or_a_clear_refusal(name):
    model = build(name).train()
    x, targets = batch(model.tasks, 7)
    if not hard_sharing(name, model):
        with pytest.raises(NoSharedRepresentation, match="no single shared representation"):
            model.representation_key
        return
    out, per_task = losses(model, x, targets)
    z = out.features[model.representation_key]
    for k in range(len(model.tasks)):  # every head reads it
        (g,) = torch.autograd.grad(per_task[k], z, retain_graph=True)
        assert g.abs().sum() > 0
    # z separates trunk and heads: the trunk's gradient is the chain rule through z (what -UB methods use)
    shared = model.shared_parameters()
    direct = torch.autograd.grad(sum(per_task), shared, retain_graph=True)
    (dz,) = torch.autograd.grad(sum(per_task), z, retain_graph=True)
    through_z = torch.autograd.grad(z, shared, grad_outputs=dz)
    for a, b in zip(direct, through_z):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
