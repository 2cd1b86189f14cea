"""Random loss weighting (RLW) (docs/weighting.md#rlw).

Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022 (arXiv 2111.10603), Sec. 3: at every step
lambda = f(lambda~), lambda~ ~ p(lambda~), f a normalisation (softmax for the normal sampler).
"""
from __future__ import annotations

import torch
from torch import Tensor

from okd.weighting.arguments import require, require_choice
from okd.weighting.base import LossWeighting
from okd.weighting.gradtools import OwnedGenerator

SAMPLERS = ("normal", "uniform", "dirichlet", "bernoulli")
SCALES = ("one", "num_tasks")
# Bernoulli masks are drawn as the bits of one int64 integer.
_MAX_BERNOULLI_TASKS = 62


class RLW(LossWeighting):
    """Fresh random task weights at every step, from a seeded generator owned by the method.

    Lin et al., TMLR 2022, Sec. 3: lambda = f(lambda~), lambda~ ~ p, normalised to sum 1 (times K
    with ``scale: num_tasks``). Samplers ``normal`` (softmax of N(0, I)), ``uniform``,
    ``dirichlet`` and ``bernoulli`` (at least one task on, drawn as the bits of one integer);
    the generator lives on the losses' device and in :meth:`extra_state` (docs/weighting.md#rlw).

    Args:
        sampler: one of ``normal``, ``uniform``, ``dirichlet``, ``bernoulli``.
        seed: seed of the method's generator (an int >= 0).
        scale: ``one`` or ``num_tasks``.
    """

    def __init__(self, sampler: str = "normal", seed: int = 0, scale: str = "one") -> None:
        super().__init__()
        require_choice("RLW", "sampler", sampler, SAMPLERS)
        require(not isinstance(seed, bool) and isinstance(seed, int) and seed >= 0,
                "RLW", "seed", "an int >= 0", seed)
        require_choice("RLW", "scale", scale, SCALES)
        self.sampler = sampler
        self.seed = seed
        self.scale = scale
        self.generator = OwnedGenerator(seed, "RLW")

    def setup(self, num_tasks: int) -> None:
        if self.sampler == "bernoulli" and num_tasks > _MAX_BERNOULLI_TASKS:
            raise ValueError(
                f"RLW: sampler 'bernoulli' supports at most {_MAX_BERNOULLI_TASKS} tasks, got {num_tasks}"
            )

    # -- sampling ------------------------------------------------------------------------------
    def weights(self, losses: Tensor) -> Tensor:
        lam = self.sample(losses.shape[0], losses.device)
        if self.scale == "num_tasks":
            lam = lam * losses.shape[0]
        return lam.to(losses.dtype)

    def sample(self, k: int, device: torch.device) -> Tensor:
        """One draw of lambda (k,), summing to 1, on ``device`` (float32)."""
        gen = self.generator.get(device)
        if self.sampler == "normal":
            return torch.softmax(torch.randn(k, generator=gen, device=device), dim=0)
        if self.sampler == "uniform":
            u = torch.rand(k, generator=gen, device=device)
            return u / u.sum()
        if self.sampler == "dirichlet":
            e = torch.empty(k, device=device).exponential_(1.0, generator=gen)
            return e / e.sum()
        # bernoulli: bits of m ~ U{1, ..., 2^k - 1}
        m = torch.randint(1, 2**k, (1,), generator=gen, device=device)
        mask = ((m >> torch.arange(k, device=device)) & 1).float()
        return mask / mask.sum()

    # -- state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"generator": self.generator.state()}

    def load_extra_state(self, state: dict) -> None:
        # The generator is (re)built on the losses' device at the next draw.
        saved = state.get("generator") or {}  # None: saved before the first draw
        if "device_type" in saved:  # checkpoints written before RLW used OwnedGenerator
            saved = {"device": saved["device_type"], "state": saved["state"]}
        self.generator.load(saved)
