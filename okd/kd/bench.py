"""``python -m okd.kd.bench``: the OKD part of ``python -m okd.bench`` alone (kept as an alias).

    python -m okd.kd.bench                                   # tiny SegNet (width 0.125), 48x64, batch 8
    python -m okd.kd.bench --width 1.0 --size 288x384 --device cuda --json okd_bench.json

Equivalent to ``python -m okd.bench --methods none --no-eval --width 0.125 --size 48x64 ...``: the
framework's ``kd=okd`` step against the sum of its bare components (the student step and each of the
K teacher steps in plain PyTorch loops). Every ``okd.bench`` option is accepted (those given win over
the defaults above); ``--weighting X`` is the former spelling of ``--okd-weighting X``. See
okd/bench.py for what is measured.
"""
from __future__ import annotations

from typing import Sequence

from okd import bench

DEFAULTS = ["--methods", "none", "--no-eval", "--width", "0.125", "--size", "48x64"]


def translate(argv: Sequence[str]) -> list[str]:
    """The alias's defaults first (argparse: later options win), the former ``--weighting`` renamed."""
    out = []
    for arg in argv:
        if arg == "--weighting" or arg.startswith("--weighting="):
            arg = arg.replace("--weighting", "--okd-weighting", 1)
        out.append(arg)
    return [*DEFAULTS, *out]


def main(argv: Sequence[str] | None = None) -> dict:
    import sys

    given = sys.argv[1:] if argv is None else list(argv)
    return bench.main(translate(given), prog="python -m okd.kd.bench")


if __name__ == "__main__":
    main()
