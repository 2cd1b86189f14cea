"""okd's Hydra launcher plugin: Hydra accepts launchers only from the ``hydra_plugins`` namespace package.

``hydra/launcher=okd_slurm`` selects :class:`SlurmLauncher`; everything it does lives in :mod:`okd.slurm`.
"""
from okd.slurm import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """:class:`okd.slurm.SlurmLauncher` under a name Hydra loads."""
