"""Knowledge distillation: distillers own teachers, adaptors and gates (see base.py)."""
from okd.kd.base import Distiller, NoDistillation

__all__ = ["Distiller", "NoDistillation"]
