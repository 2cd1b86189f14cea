"""okd's Hydra launcher plugin: Hydra accepts launchers only from the ``hydra_plugins`` namespace package.

``hydra/launcher=okd_slurm`` selects :class:`SlurmLauncher`; everything it does lives in :mod:`okd.slurm`.
Without hydra-submitit-launcher (the ``sweeps`` extra) this module defines nothing, quietly: Hydra scans it
on every start.
"""
from okd import slurm

if slurm.SUBMITIT:

    class SlurmLauncher(slurm.SlurmLauncher):
        """:class:`okd.slurm.SlurmLauncher` under a name Hydra loads."""
