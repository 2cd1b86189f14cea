"""Random loss weighting (RLW) (docs/weighting.md#rlw).

Lin, Ye, Zhang, Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022 (arXiv 2111.10603), Sec. 3: at every step
lambda = f(lambda~), lambda~ ~ p(lambda~), f a normalisation (softmax for the normal sampler).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from okd.weighting.base import LossWeighting

SAMPLERS = ("normal", "uniform", "dirichlet", "bernoulli")
SCALES = ("one", "num_tasks")
# Bernoulli masks are drawn as the bits of one int64 integer.
_MAX_BERNOULLI_TASKS = 62


class RLW(LossWeighting):
    """Fresh random task weights at every step, from a seeded generator owned by the method.

    Samplers (``sampler``), each normalised to sum 1:

    * ``normal`` (paper default): lambda = softmax(z), z ~ N(0, I_K).
    * ``uniform``: u ~ U(0, 1)^K, lambda = u / sum(u).
    * ``dirichlet``: lambda ~ Dirichlet(1, ..., 1), drawn as e / sum(e) with e_k ~ Exp(1).
    * ``bernoulli``: each task on with probability 1/2, conditioned on at least one task on,
      lambda = mask / (number of tasks on), so every weight is 0 or 1/m. The all-off mask is
      excluded because it gives no update; drawing the mask as the bits of one integer uniform
      on [1, 2^K - 1] is exactly that conditional law, without the resampling loop (and its
      host sync) that rejection would need. (LibMTL resamples and leaves the 0/1 weights
      unnormalised; it also softmaxes the uniform and Dirichlet samples.)

    ``scale``: ``one`` (the paper's weights, summing to 1) or ``num_tasks`` (times K, the scale of
    EW's sum of losses).

    Samples are drawn on the losses' device from a ``torch.Generator`` seeded with ``seed``; its
    state is part of :meth:`extra_state`, so a resumed run continues the same stream. Under DDP
    every rank draws the same weights given the same seed.

    Args:
        sampler: one of ``normal``, ``uniform``, ``dirichlet``, ``bernoulli``.
        seed: seed of the method's generator (an int >= 0).
        scale: ``one`` or ``num_tasks``.
    """

    def __init__(self, sampler: str = "normal", seed: int = 0, scale: str = "one") -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"RLW: sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"RLW: seed must be an int >= 0, got {seed!r}")
        if scale not in SCALES:
            raise ValueError(f"RLW: scale must be one of {list(SCALES)}, got {scale!r}")
        self.sampler = sampler
        self.seed = seed
        self.scale = scale
        self._generator: torch.Generator | None = None
        self._pending_state: dict | None = None

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
        gen = self._generator_for(device)
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

    def _generator_for(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if self._generator is not None and _same_device(self._generator.device, device):
            return self._generator
        if self._generator is not None:
            warnings.warn(
                f"RLW: losses moved from {self._generator.device} to {device}; "
                f"restarting the generator from seed {self.seed}",
                stacklevel=3,
            )
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        pending, self._pending_state = self._pending_state, None
        if pending is not None:
            if pending["device_type"] == device.type:
                gen.set_state(pending["state"])
            else:
                warnings.warn(
                    f"RLW: checkpointed generator state is for {pending['device_type']}, losses are on "
                    f"{device.type}; restarting the generator from seed {self.seed}",
                    stacklevel=3,
                )
        self._generator = gen
        return gen

    # -- state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        if self._generator is None:
            # Nothing drawn yet (or a restored state not used yet): keep what would be used.
            return {"generator": self._pending_state}
        return {
            "generator": {
                "device_type": self._generator.device.type,
                "state": self._generator.get_state(),
            }
        }

    def load_extra_state(self, state: dict) -> None:
        # The generator is (re)built on the losses' device at the next draw.
        self._generator = None
        self._pending_state = state.get("generator")


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # torch.device("cuda") has index None; treat it as the current device.
    if a.type == "cuda":
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return True
