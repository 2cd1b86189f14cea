"""Adaptive feature distillation (AFD) (docs/okd.md#adaptive-feature-distillation-afd).

Jacob, Agarwal, Stenger, "Online Knowledge Distillation for Multi-task Learning", WACV 2023,
Sec. 3.2 (adaptive feature distillation). For task i and distilled stage j, with student feature
s_j and teacher feature t_ij:

    n(x)        = x / sqrt(sum_c x_c^2 + eps)                      (eps = 1e-6, per pixel)
    d_ij        = mean_{b,h,w} sum_c ( n(A_ij(s_j)) - sigma_ij n(t_ij) )^2
    L_AFD_i     = (1/J) sum_j d_ij
    L_AFD       = sum_i lambda_i L_AFD_i          lambda = (segmentation 1, depth 1, normal 2)

A_ij is a bias-free 1x1 convolution (Xavier-normal init), sigma_ij a learnable scalar initialised
uniformly in [0, 1). With unit vectors the per-pixel term is 1 - 2 sigma cos + sigma^2, so the
gradient into the student scales with sigma: a gate driven to 0 switches that (task, stage) off.
This is the ``per_task`` variant (the CNN protocol).

The ``summed`` variant is the paper's transformer protocol (docs/okd.md#transformer-variant-summed): one
target per block, the gated sum over the teachers, and no adaptors by default:

    d_j   = mean_{b,n} sum_c ( n(s_j) - sum_i sigma_ij n(t_ij) )^2,     L_AFD = (1/J) sum_j d_j

(no per-task term, hence no task weights). ``variant=None`` picks ``summed`` for transformer
features: token sequences (rank 3, (B, N, C)) or ViT blocks (stages named ``block<N>``, which
okd/models/vit.py returns as (B, C, h, w) maps of the patch tokens); ``per_task`` otherwise.
Token sequences are handled as (B, C, N, 1) maps; when student and teacher sequences differ in
length the leading extra tokens (class / task tokens, which ViT and Segmenter prepend) are dropped.

Per-column features: a stage name containing ``{task}`` (e.g. ``{task}/layer3`` for cross-stitch
networks, whose features are per task column) reads the student feature of task i's column for
task i, and the same name from teacher i.

Switches (each an ablation of the paper): ``gates=False`` fixes sigma to 1; ``adaptors=False``
compares the student's own feature (channels must then match the teacher's); both off is plain
(non-adaptive) feature distillation. The adaptors map C_s -> C_t channels, so teachers of another
width can be distilled from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

#: lambda_i of L_AFD (docs/okd.md#cnn-variant-per_task; the release's ``lambda_ = [1, 1, 2]``).
DEFAULT_TASK_WEIGHTS = {"segmentation": 1.0, "depth": 1.0, "normal": 2.0}
PER_TASK, SUMMED = "per_task", "summed"
VARIANTS = (PER_TASK, SUMMED)


def channel_normalize(x: Tensor, dim: int, eps: float = 1e-6) -> Tensor:
    """n(x) = x / sqrt(sum_c x_c^2 + eps) over the channel dimension ``dim`` (docs/okd.md#adaptive-feature-distillation-afd)."""
    return x * torch.rsqrt(x.pow(2).sum(dim=dim, keepdim=True) + eps)


def as_map(x: Tensor, where: str) -> Tensor:
    """(B, C, H, W) maps as they are; (B, N, C) token sequences as (B, C, N, 1)."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.transpose(1, 2).unsqueeze(-1)
    raise ValueError(f"{where}: distilled features must be (B, C, H, W) maps or (B, N, C) token "
                     f"sequences, got shape {tuple(x.shape)}")


def stage_key(stage: str, task: str) -> str:
    """The feature name of ``stage`` for ``task`` (``{task}`` templates are per-column features)."""
    return stage.replace("{task}", task)


def stage_label(stage: str) -> str:
    """``{task}/layer3`` -> ``layer3`` for log keys (which already name the task)."""
    return stage.replace("{task}/", "").replace("{task}", "task")


def default_stages(model: nn.Module) -> list[str]:
    """The stages distilled when none are configured: the model's ``distillation_stages``
    (okd/models/base.py; each backbone declares its own, e.g. ResNet's five stages of the release,
    docs/okd.md#networks), or every name in its ``feature_names`` when it declares none."""
    stages = list(getattr(model, "distillation_stages", ()) or getattr(model, "feature_names", ()))
    if not stages:
        raise ValueError(f"{type(model).__name__} names no stage features (feature_names is empty); set "
                         f"the distilled stages explicitly (kd.stages=[...])")
    return stages


def available_features(model: nn.Module) -> list[str]:
    names = list(getattr(model, "feature_names", ()))
    try:
        rep = model.representation_key
    except (AttributeError, ValueError):  # MTAN / cross-stitch have no shared representation
        rep = None
    return names + ([rep] if rep and rep not in names else [])


def check_stages(stages: Sequence[str], model: nn.Module, role: str, tasks: Sequence[str]) -> None:
    """Every distilled stage (for every task it is read for) must be a feature the model returns."""
    available = available_features(model)
    missing = sorted({stage_key(s, t) for s in stages for t in tasks} - set(available))
    if missing:
        raise ValueError(f"kd.stages: {missing} not among the features of the {role} "
                         f"({type(model).__name__}: {available})")


@dataclass
class AFDOutput:
    """``total``: the student's extra loss; ``terms``: detached d_ij (K, J) (per_task) or d_j (J,)."""

    total: Tensor
    terms: Tensor


class AdaptiveFeatureDistillation(nn.Module):
    """The AFD loss with its adaptors and gates (see the module docstring for the formulas).

    Adaptors are built at the first call (or from a saved :meth:`layout`), when the channel counts
    and the feature kind are known; gates exist from construction so that they can join the
    student's optimizer before training.

    Args:
        tasks: task names, in the student's task order (i).
        stages: names of the distilled features (j); ``{task}`` marks per-column features.
        gates: learnable sigma (True) or sigma = 1 (False).
        adaptors: 1x1 adaptors on the student feature; None = on for ``per_task``, off for
            ``summed`` (the paper's transformer variant).
        task_weights: lambda_i by task name (default segmentation 1, depth 1, normal 2).
        variant: ``per_task`` | ``summed`` | None (decided from the features, see above).
        eps: the epsilon of n(x).
    """

    def __init__(self, tasks: Sequence[str], stages: Sequence[str], gates: bool = True,
                 adaptors: bool | None = None, task_weights: Mapping[str, float] | None = None,
                 variant: str | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.tasks, self.stages = list(tasks), list(stages)
        if not self.tasks or not self.stages:
            raise ValueError(f"AFD needs at least one task and one stage, got tasks={self.tasks}, "
                             f"stages={self.stages}")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"kd.stages has duplicates: {self.stages}")
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"kd.variant must be one of {list(VARIANTS)} or null (auto), got {variant!r}")
        weights = dict(DEFAULT_TASK_WEIGHTS if task_weights is None else task_weights)
        missing = [t for t in self.tasks if t not in weights]
        if missing:
            raise ValueError(f"kd.task_weights has no weight for task(s) {missing} (given: {weights})")
        self.register_buffer("task_weights", torch.tensor([float(weights[t]) for t in self.tasks]))
        self.use_gates, self.use_adaptors, self.eps = bool(gates), adaptors, float(eps)
        self.requested_variant = variant
        # sigma_ij ~ U[0, 1) (the release's torch.rand); one (K, J) tensor = K*J scalar gates.
        self.gates = nn.Parameter(torch.rand(len(self.tasks), len(self.stages))) if gates else None
        self.adaptors = nn.ModuleDict()
        self.variant: str | None = None
        self.channels: dict[str, list[int]] = {}

    # -- construction ----------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.variant is not None

    @property
    def has_adaptors(self) -> bool:
        return len(self.adaptors) > 0

    @property
    def templated(self) -> bool:
        return any("{task}" in s for s in self.stages)

    def layout(self) -> dict | None:
        """What :meth:`build_layout` needs to rebuild the adaptors (kept in checkpoints)."""
        if not self.built:
            return None
        return {"variant": self.variant, "channels": dict(self.channels), "adaptors": self.has_adaptors}

    def build(self, student: Mapping[str, Tensor], teachers: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Decide the variant and infer the channels from one batch of features; build the adaptors."""
        ranks, channels = set(), {}
        for stage in self.stages:
            c_s, c_t = set(), set()
            for task in self.tasks:
                s, t = student[stage_key(stage, task)], teachers[task][stage_key(stage, task)]
                ranks.add(s.dim())
                c_s.add(int(as_map(s, f"student feature {stage!r}").shape[1]))
                c_t.add(int(as_map(t, f"{task} teacher feature {stage!r}").shape[1]))
            if len(c_s) != 1 or len(c_t) != 1:
                raise ValueError(f"AFD: the {stage!r} features differ in channels across tasks "
                                 f"(student {sorted(c_s)}, teachers {sorted(c_t)})")
            channels[stage] = [c_s.pop(), c_t.pop()]
        variant = self.requested_variant
        if variant is None:
            vit_blocks = all(stage_label(s).startswith("block") for s in self.stages)
            variant = SUMMED if ranks == {3} or vit_blocks else PER_TASK
        if variant == SUMMED and self.templated:
            raise ValueError(f"AFD: the summed (transformer) variant distils one student feature per stage; "
                             f"per-column stages {self.stages} need kd.variant=per_task")
        adaptors = (variant == PER_TASK) if self.use_adaptors is None else self.use_adaptors
        self.build_layout({"variant": variant, "channels": channels, "adaptors": adaptors},
                          device=next(iter(student.values())).device)

    def build_layout(self, layout: Mapping, device: torch.device | None = None) -> None:
        self.variant, self.channels = layout["variant"], {k: list(v) for k, v in layout["channels"].items()}
        if not layout["adaptors"]:
            for stage, (c_s, c_t) in self.channels.items():
                if c_s != c_t:
                    raise ValueError(f"AFD without adaptors: student feature {stage!r} has {c_s} channels, "
                                     f"the teachers' {c_t}; enable adaptors (kd.adaptors=true)")
            return
        # per_task: one set of 1x1 adaptors per task (docs/okd.md#cnn-variant-per_task). summed: one target per block,
        # so one adaptor per block (only when asked for; the paper's transformer variant has none).
        owners = self.tasks if self.variant == PER_TASK else ["all"]
        for owner in owners:
            per_stage = nn.ModuleDict()
            for stage in self.stages:
                c_s, c_t = self.channels[stage]
                layer = nn.Conv2d(c_s, c_t, 1, bias=False)
                nn.init.xavier_normal_(layer.weight)
                per_stage[_key(stage)] = layer
            self.adaptors[owner] = per_stage
        self.adaptors.to(device or self.task_weights.device)

    def adaptor_parameters(self) -> list[nn.Parameter]:
        return list(self.adaptors.parameters())

    def sigma(self) -> Tensor:
        """(K, J) gates (ones when gates are off)."""
        if self.gates is not None:
            return self.gates
        return torch.ones(len(self.tasks), len(self.stages), device=self.task_weights.device)

    # -- the loss --------------------------------------------------------------------------------
    def forward(self, student: Mapping[str, Tensor], teachers: Mapping[str, Mapping[str, Tensor]]) -> AFDOutput:
        """``student[name]``: the student's features (with graph); ``teachers[task][name]``: the
        teachers' features (detached here whatever the caller did: no gradient reaches a teacher)."""
        if not self.built:
            self.build(student, teachers)
        sigma = self.sigma()
        terms = [self._stage(j, stage, student, teachers, sigma) for j, stage in enumerate(self.stages)]
        if self.variant == PER_TASK:
            d = torch.stack(terms, dim=1)                                              # (K, J)
            return AFDOutput((self.task_weights * d.mean(dim=1)).sum(), d.detach())
        d = torch.stack(terms)                                                         # (J,)
        return AFDOutput(d.mean(), d.detach())

    def _stage(self, j: int, stage: str, student, teachers, sigma: Tensor) -> Tensor:
        ss = [as_map(student[stage_key(stage, task)], stage) for task in self.tasks]
        ts = [as_map(teachers[task][stage_key(stage, task)].detach(), stage) for task in self.tasks]
        n = min(x.shape[2] for x in ss + ts)
        if any(x.shape[2] != n for x in ss + ts) and {x.shape[3] for x in ss + ts} == {1}:
            ss, ts = [x[:, :, x.shape[2] - n:] for x in ss], [x[:, :, x.shape[2] - n:] for x in ts]
        for s, t in zip(ss, ts):
            _check_same(s, t, stage)
        t = torch.stack(ts, dim=1)                                                     # B K C H W
        if self.variant == SUMMED:
            s = ss[0]
            if self.has_adaptors:
                s = self.adaptors["all"][_key(stage)](s)
            # float32: n(x)'s gradient at near-zero features overflows float16 (see _map_distance)
            target = (sigma[:, j].view(1, -1, 1, 1, 1) * channel_normalize(t.float(), 2, self.eps)).sum(1)
            return (channel_normalize(s.float(), 1, self.eps) - target).pow(2).sum(1).mean()
        if self.has_adaptors:
            weights = [self.adaptors[task][_key(stage)].weight for task in self.tasks]
            if self.templated:   # per-column features: each task's adaptor reads its own column
                a = torch.stack([nn.functional.conv2d(s, w) for s, w in zip(ss, weights)], dim=1)
            else:                # the K adaptors of a shared feature as one convolution
                a = nn.functional.conv2d(ss[0], torch.cat(weights)).unflatten(1, (len(self.tasks), -1))
        else:
            a = torch.stack(ss, dim=1) if self.templated else ss[0].unsqueeze(1)     # B K|1 C H W
        return self._map_distance(a, t, sigma[:, j])                                  # (K,)

    def _map_distance(self, a: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
        """mean_{b,h,w} sum_c (n(a) - sigma n(t))^2 for a: (B, K|1, C, H, W), t: (B, K, C, H, W).

        Expanded per pixel as |n(a)|^2 - 2 sigma <n(a), n(t)> + sigma^2 |n(t)|^2 with
        |n(x)|^2 = S_x / (S_x + eps) and <n(a), n(t)> = <a, t> / sqrt((S_a + eps)(S_t + eps)):
        three channel reductions instead of normalised copies of both tensors and their difference
        (the same value with less memory traffic, forward and backward).
        """
        eps = self.eps
        # float32 under fp16/bf16 autocast: at pixels where a feature is (near) zero, as ReLU features
        # often are, d(S/(S+eps))/dS = 1/eps = 1e6 and the rsqrt terms are larger still; in float16
        # these gradients are inf at any loss scale, and every fp16 step would be skipped
        a, t = a.float(), t.float()
        s_a = (a * a).sum(2)                                                          # B K|1 H W
        dot = (a * t).sum(2)                                                          # B K H W
        with torch.no_grad():
            s_t = (t * t).sum(2)
            inv_t = torch.rsqrt(s_t + eps)
            t_sq = s_t / (s_t + eps)
        sig = sigma.view(1, -1, 1, 1)
        pixel = s_a / (s_a + eps) - 2 * sig * dot * torch.rsqrt(s_a + eps) * inv_t + sig * sig * t_sq
        return pixel.mean(dim=(0, 2, 3))

    # -- names for logging -----------------------------------------------------------------------
    def term_names(self) -> list[str]:
        """Log keys of :attr:`AFDOutput.terms`, flattened in the same order."""
        if self.variant == SUMMED:
            return [f"afd/{stage_label(s)}" for s in self.stages]
        return [f"afd/{task}/{stage_label(s)}" for task in self.tasks for s in self.stages]

    def gate_names(self) -> list[str]:
        return [f"gate/{task}/{stage_label(s)}" for task in self.tasks for s in self.stages]


def _key(stage: str) -> str:
    """ModuleDict keys may contain neither dots (``blocks.3``) nor braces/slashes kept readable."""
    return stage_label(stage).replace(".", "_").replace("/", "_")


def _check_same(s: Tensor, t: Tensor, stage: str) -> None:
    if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(f"AFD: student feature {stage!r} has shape {tuple(s.shape)}, the teacher's "
                         f"{tuple(t.shape)}; they must agree in batch and spatial/token size")
