"""Task weighting methods: one class per method, one file per class (see base.py)."""
from okd.weighting.base import BoundModel, GradientWeighting, LossWeighting, Weighting
from okd.weighting.ew import EW

__all__ = ["BoundModel", "Weighting", "LossWeighting", "GradientWeighting", "EW"]
