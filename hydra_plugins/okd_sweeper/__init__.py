"""okd's Hydra sweeper plugin: Hydra accepts sweepers only from the ``hydra_plugins`` namespace package.

``hydra/sweeper=okd_staged`` (every ``conf/sweep/paper_*``) selects :class:`StagedSweeper`; everything it
does lives in :class:`okd.launch.StagedSweeper`.
"""
from okd import launch


class StagedSweeper(launch.StagedSweeper):
    """:class:`okd.launch.StagedSweeper` under a name Hydra loads."""
