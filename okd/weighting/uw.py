"""Uncertainty weighting (UW) (docs/weighting.md#uw).

Kendall, Gal, Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
and Semantics", CVPR 2018, Eqs. (7) and (10).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from okd.weighting.arguments import is_number, require, require_choice
from okd.weighting.base import LossWeighting

#: form -> default initial s = log sigma^2 (docs/weighting.md#uw).
_DEFAULT_INIT = {"kendall": 0.0, "halved": -0.5}


class UW(LossWeighting):
    """Homoscedastic-uncertainty weighting with learnable s_k = log sigma_k^2.

    Kendall et al., CVPR 2018: ``form: kendall`` minimises sum_k exp(-s_k) L_k + s_k (Eq. 10's
    form, the OKD release's), ``halved`` sum_k L_k / (2 exp(s_k)) + s_k / 2 (Eq. 7, as mtan and
    LibMTL). s joins the optimizer through :meth:`param_groups`; the logged weights are the
    effective weights on L_k (docs/weighting.md#uw).

    Args:
        form: ``kendall`` or ``halved``.
        init: initial s_k; ``None`` takes the form's default (kendall 0.0, halved -0.5).
    """

    def __init__(self, form: str = "kendall", init: float | None = None) -> None:
        super().__init__()
        require_choice("UW", "form", form, sorted(_DEFAULT_INIT))
        require(init is None or is_number(init), "UW", "init", "a finite number or None", init)
        self.form = form
        self.init = _DEFAULT_INIT[form] if init is None else float(init)

    def setup(self, num_tasks: int) -> None:
        self.log_vars = nn.Parameter(torch.full((num_tasks,), self.init))

    def param_groups(self) -> list[dict]:
        # No weight decay: it would pull every s_k towards 0, a prior the method does not have.
        return [{"params": [self.log_vars], "weight_decay": 0.0}]

    def weights(self, losses: Tensor) -> Tensor:
        precision = torch.exp(-self.log_vars)  # 1 / sigma^2
        return precision if self.form == "kendall" else 0.5 * precision

    def regularizer(self) -> Tensor:
        # log sigma^2 (kendall) or log sigma = s / 2 (halved).
        total = self.log_vars.sum()
        return total if self.form == "kendall" else 0.5 * total
