"""Every command of README.md's ```bash blocks runs as written, or is on SKIP with its reason.

The README is parsed when the test runs, so a command added later is run too: it passes, or the test
fails naming it until it works or is classified in SKIP. Each command runs in a scratch folder (its
relative paths, e.g. ``outputs/2026-11-24/10-00-00``, exist there: FIXTURES), with ``/data/...`` and
``/tmp/...`` moved into that folder, the data roots filled with the synthetic generator's files in the
real NYUv2/Cityscapes layouts (okd.data.synthetic.write_layout; raw Cityscapes PNGs as in
tests/test_prepare.py), and small settings appended so that it takes about a second:

* ``python run.py`` (training): 1 epoch, tiny images and splits, the smallest network of its family,
  batch 2, 1 thread, no workers, ``logger=none``, OKD's teachers 1 warm-up epoch (single runs); only for
  the keys the command does not set itself (``trainer.batch_size=0`` stays bad input); a run dir under
  ``runs/`` unless the command names one;
  ``-m`` sweeps are **shrunk** (:func:`shrink_value`): a seed list keeps its first seed, an ``experiment``
  list its single-task presets, its KD-MTL presets (which need those as teachers) and one other, any other list
  its first two values; a ready sweep (``+sweep=``) gets its own lists shrunk the same way on the command
  line (which replaces a swept key), and at most 2 Optuna trials;
* ``mode=eval`` / ``mode=predict``: nothing but ``logger=none``, 1 thread (the checkpoint has the rest);
* ``python -m okd.data.synthetic``: ``--n 5 --size 32x32``; ``okd.data.prepare``: ``--size 8x16`` and
  an empty ``--out`` (its README ``--out`` holds the Cityscapes files the run commands read);
  ``okd.bench``: one step, one round, 32x32, width 0.0625, batch 2, EW only;
* ``make run``: the Makefile's recipe (``make -n run ARGS=<the tiny settings>``), run like ``python run.py``;
* ``export``: applied to the environment of the commands after it (README order), as in a shell;
  ``VAR=value command``: to that command only.

A command passes when it exits with status 0 and wrote what it promises: a training run its
``summary.json`` (a sweep: every job done, by its end-of-sweep screen), ``mode=eval`` its ``eval.json``,
``mode=predict`` its ``predictions/*.npz``, ``okd.report`` its ``report.md``, a tool its ``--out``/``--json``.
Commands run in a warm interpreter that forks per command (tests/warm_python.py): ~55 commands in about
75 s of CPU time (0.1–7 s each), so about 80 s on an idle 2-core machine.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.warm_python import WarmPython

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Commands not run here: (regular expression searched in the command, reason). Every entry must still
#: match a README command (test_skip_list_is_current).
SKIP: list[tuple[str, str]] = [
    (r"^make test$", "runs the whole suite, this test included (7 to 12 minutes on 2 cores); CI runs it"),
    (r"^make test-cluster$", "needs root to start a SLURM cluster; tests/cluster/ (make test-cluster) covers it"),
    (r"^\.venv/bin/python -m pytest ", "runs another test file, which the suite runs itself"),
    (r"^mkdir -p \$\{TORCH_HOME", "a manual download step: writes into the user's torch cache"),
    (r"^cp resnet50-0676ba61\.pth ", "a manual download step: needs the file from download.pytorch.org (network)"),
    (r"^(CUDA_VISIBLE_DEVICES=\S+ )?wandb (sweep|agent) ", "needs a W&B account and the network"),
    (r"ckpt=wandb:", "a checkpoint logged to W&B: needs a W&B account, a logged run and the network"),
    (r"hydra/launcher=okd_slurm", "needs a SLURM cluster; tests/cluster/ runs the launcher against a real one"),
    (r"^srun ", "a SLURM job script; tests/cluster/ runs srun torchrun against a real cluster"),
    (r"^torchrun --standalone --nproc_per_node=4 ",
     "4 processes on 4 GPUs; tests/test_distributed.py runs torchrun with 2 CPU processes"),
    (r"--device cuda|--preset gpu", "needs a CUDA GPU (python -m okd.gpu_check runs it on a GPU machine)"),
]

#: Relative paths the README uses as examples, made in the scratch folder before the commands run
#: (by the commands below, in this order; the same tiny settings are appended).
FIXTURES: list[tuple[str, list[str]]] = [
    ("outputs/2026-11-24/10-00-00", ["run.py", "hydra.run.dir=outputs/2026-11-24/10-00-00"]),
    ("outputs/multirun/2026-11-24/10-00-00",
     ["run.py", "-m", "weighting=ew", "hydra.sweep.dir=outputs/multirun/2026-11-24/10-00-00"]),
    # single-task runs of the two tasks of the multi-task runs of sweeps/mtl (--base-runs sweeps/stl/0 sweeps/stl/1)
    ("sweeps/stl", ["run.py", "-m", "dataset.tasks=[segmentation],[depth]", "hydra.sweep.dir=sweeps/stl"]),
    ("sweeps/mtl", ["run.py", "-m", "weighting=ew", "dataset.tasks=[segmentation,depth]", "hydra.sweep.dir=sweeps/mtl"]),
]

SYNTHETIC_TINY = ["dataset.height=32", "dataset.width=32", "dataset.train_size=4", "dataset.val_size=2",
                  "dataset.test_size=2"]
TRAIN_TINY = ["trainer.epochs=1", "trainer.batch_size=2", "trainer.eval_batch_size=2", "trainer.threads=1",
              "trainer.num_workers=0", "trainer.progress=false", "trainer.log_images=0", "logger=none"]
#: the smallest network of each family (by the backbone's _target_ module)
BACKBONE_TINY = {
    "okd.models.segnet": ["backbone.width=0.0625"],
    "okd.models.resnet": ["backbone.pretrained=false", "backbone.depth=18", "backbone.width=0.0625",
                          "backbone.layers=[2,2,2,2]", "backbone.aspp_channels=4"],  # MTAN needs 2 blocks per stage
    "okd.models.vit": ["backbone.pretrained=false", "backbone.img_size=32", "backbone.patch_size=8",
                       "backbone.embed_dim=16", "backbone.depth=1", "backbone.num_heads=2", "backbone.decoder_depth=1"],
}
for _family in ("okd.models.mtan.MTANResNet", "okd.models.cross_stitch.CrossStitchResNet"):
    BACKBONE_TINY[_family] = BACKBONE_TINY["okd.models.resnet"]
for _family in ("okd.models.mtan.MTANSegNet", "okd.models.cross_stitch.CrossStitchSegNet"):
    BACKBONE_TINY[_family] = BACKBONE_TINY["okd.models.segnet"]
#: appended to the other tools (argparse: the last value of an option wins)
TOOL_TINY = {
    "okd.data.synthetic": ["--n", "5", "--size", "32x32"],
    "okd.data.prepare": ["--size", "8x16", "--out", "{scratch}/data/cityscapes_prepared"],
    "okd.bench": ["--steps", "1", "--rounds", "1", "--warmup", "0", "--size", "32x32", "--width", "0.0625",
                  "--batch", "2", "--threads", "1", "--eval-batches", "1"],
}
#: okd.bench: the training part for EW only, unless the command picks its methods
BENCH_METHODS = ["--methods", "ew"]

TIMEOUT_S = 120


# ----------------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Command:
    line: int      # README line where it starts
    text: str      # continuation lines joined, comment removed
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def readme_commands(path: Path = README) -> list[Command]:
    """The commands of every ```bash block, in order: one per line (``\\`` continuations joined), comments
    and blank lines dropped."""
    commands, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\w*)\s*$", lines[i])
        i += 1
        if not fence:
            continue
        start, body = i, []
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        if fence.group(1) != "bash":
            continue
        k = 0
        while k < len(body):
            first, text = start + k + 1, body[k]
            while text.rstrip().endswith("\\") and k + 1 < len(body):
                k += 1
                text = text.rstrip()[:-1] + " " + body[k].strip()
            k += 1
            try:
                argv = tuple(shlex.split(text, comments=True))
            except ValueError as err:
                raise AssertionError(f"README.md:{first}: cannot split {text!r} as a shell command: {err}") from None
            if argv:
                commands.append(Command(first, " ".join(argv), argv))
    return commands


def skip_reason(command: Command) -> str | None:
    for pattern, reason in SKIP:
        if re.search(pattern, command.text):
            return reason
    return None


# ------------------------------------------------------------------------------------------- data trees
def write_data(scratch: Path) -> None:
    """/data/... of the README (moved into ``scratch``): synthetic files in the real layouts."""
    from okd.data.synthetic import write_layout

    from tests.test_prepare import write_raw

    data = scratch / "data"
    write_layout(data / "nyuv2", "nyuv2", n_train=5, n_val=2, height=32, width=32)
    write_layout(data / "cityscapes", "cityscapes", n_train=5, n_val=2, height=32, width=64)
    # AdaShare's release is 256x512 and is read with dataset.resize_to: here twice the size read
    write_layout(data / "cityscapes_adashare", "cityscapes", n_train=5, n_val=2, height=64, width=128)
    write_raw(data / "cityscapes_raw")


def write_photos(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 30)), ("b.jpg", (32, 32))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)


# ------------------------------------------------------------------------------------- rewriting argv
def localise(arg: str, scratch: Path) -> str:
    """``/data/x`` and ``/tmp/x`` inside ``scratch``; ``.../best.pt`` is the example run's checkpoint."""
    arg = re.sub(r"(?<![\w.~$}])/(data|tmp)/", lambda m: f"{scratch}/{m.group(1)}/", arg)
    return arg.replace(".../best.pt", "outputs/2026-11-24/10-00-00/checkpoints/best.pt")


def override_value(args: list[str], key: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+~") == key and "=" in a]
    return values[-1] if values else None


def shrink_value(override: str) -> str:
    """A swept list of ``-m``, shrunk: ``seed`` keeps its first value; ``experiment`` its single-task presets
    (stl_*: KD-MTL's teachers), its KD-MTL presets and its first other one; any other list its first two values. Anything else (one value, Optuna's ranges) is kept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    if not parsed.is_sweep_override() or "(" in override:
        return override
    values = list(parsed.sweep_string_iterator())
    key = parsed.key_or_group
    if key == "seed":
        values = values[:1]
    elif key == "experiment":
        needs = ("stl_", "kdmtl")  # KD-MTL (the staged paper sweeps) trains after its single-task teachers
        values = [v for v in values if v.startswith(needs)] + [v for v in values if not v.startswith(needs)][:1]
    else:
        values = values[:2]
    return f"{override.split('=', 1)[0]}={','.join(values)}"


def shrink_sweep(overrides: list[str], swept: dict[str, str]) -> list[str]:
    """The overrides of a ``-m`` command, shrunk (:func:`shrink_value`), with the lists a ready sweep
    (conf/sweep/) sweeps (``swept``: ``hydra.sweeper.params``) shrunk on the command line, which replaces them."""
    out = [shrink_value(o) for o in overrides]
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    for key, value in swept.items():
        if key not in given and shrink_value(f"{key}={value}") != f"{key}={value}":
            out.append(shrink_value(f"{key}={value}"))
    return out


def first_job(args: list[str]) -> list[str]:
    """The overrides of a sweep's first job (each swept list: its first value), to compose it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for override in OverridesParser.create().parse_overrides(list(args)):
        if override.is_sweep_override():
            prefix = override.input_line.split("=", 1)[0]
            out.append(f"{prefix}={next(iter(override.sweep_string_iterator()))}")
        else:
            out.append(override.input_line)
    return out


def run_py_args(args: list[str], scratch: Path, env: dict[str, str], index: int) -> tuple[list[str], dict]:
    """A ``python run.py`` command with its tiny settings appended, and what it must write."""
    if any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info") for a in args):
        return args, {"kind": "print"}
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if not a.startswith("-")]
    from okd.config import compose

    saved = dict(os.environ)
    os.environ.update(env)  # OKD_*_ROOT from an `export` of the README
    try:
        cfg = compose(first_job(overrides), as_run=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if multirun:
        overrides = shrink_sweep(overrides, dict(OmegaConfSelect(cfg, "hydra.sweeper.params") or {}))
        args = [a for a in args if a.startswith("-")] + overrides
    mode = str(cfg.get("mode", "train"))
    extra = ["trainer.threads=1", "logger=none"]
    if mode == "train":
        extra = list(TRAIN_TINY)
        if cfg.dataset._target_ == "okd.data.synthetic.build":
            extra += SYNTHETIC_TINY
        target = str(cfg.backbone._target_)
        tiny = BACKBONE_TINY.get(target) or BACKBONE_TINY.get(target.rsplit(".", 1)[0])
        assert tiny is not None, f"no tiny settings for backbone {target} in tests/test_readme.py BACKBONE_TINY"
        # a sweep's base config (composed before its swept overrides, e.g. experiment=...) may have another
        # backbone: ++ sets the key there too; every job's own backbone has these keys
        extra += [f"++{t}" for t in tiny] if multirun else tiny
        if not multirun and OmegaConfSelect(cfg, "kd.warmup_epochs") is not None:  # a sweep may mix kd options
            extra.append("kd.warmup_epochs=1")  # OKD's teachers: 1 warm-up epoch, not 5
        if multirun and OmegaConfSelect(cfg, "hydra.sweeper.n_trials") is not None:
            extra.append("hydra.sweeper.n_trials=2")
    # what the command sets itself stays: the tiny settings only fill in the rest
    given = {a.split("=", 1)[0].lstrip("+~") for a in overrides}
    extra = [e for e in extra if e.split("=", 1)[0].lstrip("+~") not in given]
    named = any(a.split("=", 1)[0] in ("hydra.run.dir", "hydra.sweep.dir") for a in overrides)
    sweep_file = any(a.startswith("+sweep=") for a in overrides)
    if multirun and not named and not sweep_file:
        extra.append(f"hydra.sweep.dir=runs/{index}")
    elif not multirun and not named and not sweep_file:
        extra.append(f"hydra.run.dir=runs/{index}")
    epochs = override_value(overrides, "trainer.epochs")
    expect = {"kind": mode, "multirun": multirun, "epochs": int(epochs) if epochs and epochs.isdigit() else 1}
    return args + extra, expect


def OmegaConfSelect(cfg, key):  # noqa: N802  (OmegaConf.select without importing omegaconf at module level)
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


# ------------------------------------------------------------------------------------------- checking
def file_times(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its mtime (ns): what a command changed is the difference."""
    times = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            try:
                times[path] = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                pass
    return times


def new_files(folder: Path, pattern: str, before: dict[str, int]) -> list[Path]:
    """Files matching ``pattern`` under ``folder`` that are new or rewritten since ``before`` (file_times)."""
    return [p for p in folder.rglob(pattern) if p.is_file() and before.get(str(p)) != p.stat().st_mtime_ns]


def check_outputs(expect: dict, scratch: Path, before: dict[str, int], output: str) -> str | None:
    """What a command that exited with 0 must have written; None when it did."""
    kind = expect["kind"]
    if kind == "print":
        return None if output.strip() else "printed nothing"
    if kind == "train":
        if expect["multirun"]:
            # the end-of-sweep screen (README "Sweeps and launchers") lists every job of the sweep's folder, also
            # those that a ready sweep launched again only summarises
            screen = re.search(r"^sweep (\S+): (\d+) job\(s\), (\d+) done", output, re.MULTILINE)
            if screen is None:
                return "printed no end-of-sweep screen (`sweep <dir>: N job(s), N done ...`)"
            if int(screen.group(2)) == 0 or screen.group(2) != screen.group(3):
                return f"not every job of the sweep is done: {screen.group(0)}"
            jobs = [p.parent.parent for p in new_files(scratch, "overrides.yaml", before)]
            missing = [str(j) for j in jobs if not (j / "summary.json").is_file()]
            if missing:
                return f"sweep jobs without summary.json: {missing}"
        summaries = new_files(scratch, "summary.json", before)
        if not summaries and not expect["multirun"]:
            return "wrote no summary.json"
        for path in summaries:
            summary = json.loads(path.read_text())
            if summary.get("epochs") != expect.get("epochs", 1):
                return (f"{path}: epochs {summary.get('epochs')!r}, expected {expect.get('epochs', 1)} (the tiny settings "
                        f"did not apply)")
        return None
    if kind == "eval":
        return None if new_files(scratch, "eval.json", before) else "wrote no eval.json"
    if kind == "predict":
        return None if new_files(scratch, "*.npz", before) else "wrote no predictions/*.npz"
    if kind == "report":
        return None if new_files(scratch, "report.md", before) else "wrote no report.md"
    if kind == "file":  # --out DIR (files matching pattern in it) or --json FILE
        path, pattern = expect["path"], expect["pattern"]
        found = (new_files(path, pattern, before) if pattern else
                 [path] if path.is_file() and before.get(str(path)) != path.stat().st_mtime_ns else [])
        return None if found else f"wrote nothing at {path}"
    return None


# ---------------------------------------------------------------------------------------------- tests
def test_readme_has_commands():
    commands = readme_commands()
    texts = [c.text for c in commands]
    assert len(commands) >= 30, texts
    assert "python run.py experiment=smoke" in texts
    # continuation lines are joined into one command
    assert any(t.startswith("python run.py experiment=kdmtl kd.teachers.segmentation=") and "kd.teachers.normal=" in t
               for t in texts), texts


def test_skip_list_is_current():
    """A SKIP entry that matches no README command any more is stale: remove it."""
    texts = [c.text for c in readme_commands()]
    stale = [pattern for pattern, _ in SKIP if not any(re.search(pattern, t) for t in texts)]
    assert not stale, f"tests/test_readme.py SKIP: these patterns match no README command any more: {stale}"


def test_parser_reads_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("text\n```bash\npython run.py a=1 \\\n    b=2   # comment\n\n# only a comment\n```\n"
                      "```\npython not_bash.py\n```\n```bash\nexport X=1\n```\n")
    commands = readme_commands(readme)
    assert [(c.line, c.argv) for c in commands] == [(3, ("python", "run.py", "a=1", "b=2")), (12, ("export", "X=1"))]


def test_tiny_settings_rewrite():
    assert shrink_sweep(["weighting=ew,dwa,uw", "seed=0,1,2"], {}) == ["weighting=ew,dwa", "seed=0"]
    assert shrink_sweep(["+sweep=x", "experiment=ew,okd"], {"experiment": "stl_depth,ew,dwa,uw", "seed": "0,1,2"}) == \
        ["+sweep=x", "experiment=ew", "seed=0"]
    assert shrink_sweep(["+sweep=x"], {"experiment": "stl_depth,stl_normal,ew,dwa,uw,kdmtl_sweep"}) == \
        ["+sweep=x", "experiment=stl_depth,stl_normal,kdmtl_sweep,ew"]
    assert shrink_value("dataset.tasks=[segmentation],[depth],[normal]") == "dataset.tasks=[segmentation],[depth]"
    assert shrink_value("weighting.temperature=tag(log, interval(0.02, 2.0))") == \
        "weighting.temperature=tag(log, interval(0.02, 2.0))"
    assert first_job(["experiment=ew,okd", "dataset.tasks=[segmentation],[depth]"]) == \
        ["experiment=ew", "dataset.tasks=[segmentation]"]
    scratch = Path("/s")
    assert localise("dataset.root=/data/nyuv2", scratch) == "dataset.root=/s/data/nyuv2"
    assert localise("ckpt=.../best.pt", scratch) == "ckpt=outputs/2026-11-24/10-00-00/checkpoints/best.pt"
    assert localise("${TORCH_HOME:-~/.cache/torch}/hub", scratch) == "${TORCH_HOME:-~/.cache/torch}/hub"


@dataclass
class Outcome:
    ran: list[str]
    skipped: list[str]
    failures: list[str]


def run_readme(readme: Path, scratch: Path, py: WarmPython) -> Outcome:
    """Run every command of ``readme`` in ``scratch`` with the warm interpreter ``py`` (see the module
    docstring); what ran, what was skipped and why, what failed and why."""
    commands = readme_commands(readme)
    scratch.mkdir(parents=True, exist_ok=True)
    if any("/data/" in c.text for c in commands):
        write_data(scratch)
    if any("photos/" in c.text for c in commands):
        write_photos(scratch / "photos")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OKD_NYUV2_ROOT", "OKD_CITYSCAPES_ROOT"))}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"})
    env.pop("PYTEST_CURRENT_TEST", None)
    out = Outcome([], [], [])

    def run(argv: list[str], index: int, env: dict[str, str] = env) -> str | None:
        """Run one command; None when it passed, else why not."""
        expect: dict = {"kind": "print"}
        argv = [localise(a, scratch) for a in argv]
        if argv[0] == "run.py":
            try:
                argv, expect = run_py_args(argv[1:], scratch, env, index)
            except Exception as err:  # noqa: BLE001  (Hydra refuses to compose it: reported with the command)
                return f"cannot compose its config to choose the tiny settings: {type(err).__name__}: {err}"
            argv = [str(ROOT / "run.py"), *argv]
        elif argv[0] == "-m":
            module = argv[1]
            tiny = [t.format(scratch=scratch) for t in TOOL_TINY.get(module, [])]
            if module == "okd.bench" and "--methods" not in argv:
                tiny += BENCH_METHODS
            argv = [*argv, *tiny]
            expect = {"kind": "report" if module == "okd.report" else "print"}
            for option, pattern in (("--out", "*.npy"), ("--json", "")):
                if option in argv and module != "okd.report":  # the last one counts (argparse)
                    expect = {"kind": "file", "path": scratch / argv[len(argv) - 1 - argv[::-1].index(option) + 1],
                              "pattern": pattern}
        before = file_times(scratch)
        result = py.run(argv, cwd=scratch, env=env, timeout=TIMEOUT_S)
        if result.timed_out:
            return f"did not finish in {TIMEOUT_S} s"
        if result.returncode != 0:
            return f"exit status {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}"
        return check_outputs(expect, scratch, before, result.stdout + result.stderr)

    for n, (path, argv) in enumerate(FIXTURES):  # only those the commands use
        if any(path in c.text for c in commands):
            why = run(list(argv), 1000 + n)
            assert why is None, f"tests/test_readme.py FIXTURES {argv}: {why}"

    for index, command in enumerate(commands):
        reason = skip_reason(command)
        if reason:
            out.skipped.append(f"{command}  [skipped: {reason}]")
            continue
        argv, t0 = list(command.argv), time.monotonic()
        command_env = dict(env)
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]) and len(argv) > 1:  # VAR=value cmd
            key, _, value = argv.pop(0).partition("=")
            command_env[key] = localise(value, scratch)
        if argv[0] == "export":
            for item in argv[1:]:
                key, _, value = item.partition("=")
                env[key] = localise(value, scratch)
            out.ran.append(str(command))
            continue
        if argv[:2] == ["make", "run"]:
            if shutil.which("make") is None:
                out.skipped.append(f"{command}  [skipped: make is not installed on this machine]")
                continue
            if subprocess.run(["make", "-q", "-C", str(ROOT), "install"], capture_output=True).returncode != 0:
                out.skipped.append(f"{command}  [skipped: .venv was not installed by `make install`, so make "
                                   f"would pip install first (network)]")
                continue
            # the Makefile's recipe (make -n), with the tiny settings in ARGS, run in the warm interpreter
            tiny = [*TRAIN_TINY, *SYNTHETIC_TINY, *BACKBONE_TINY["okd.models.segnet"], f"hydra.run.dir=runs/{index}"]
            why = run(make_recipe(argv, tiny), index, command_env)
        elif argv[0] == "python":
            why = run(argv[1:], index, command_env)
        else:
            why = ("not a command this test knows how to run: run it (python ..., make run, export) or add it "
                   "to SKIP in tests/test_readme.py with the reason")
        if why:
            out.failures.append(f"{command}\n  {why}")
        else:
            out.ran.append(f"{command}  [{time.monotonic() - t0:.1f} s]")
    return out


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    with WarmPython(logs=tmp_path_factory.mktemp("warm-python-logs")) as py:
        yield py


def test_readme_commands_run(tmp_path, warm):
    """Each README command runs (status 0, its outputs written) or is on SKIP; failures are listed together."""
    started = time.monotonic()
    out = run_readme(README, tmp_path, warm)
    print(f"\n{len(out.ran)} README commands ran, {len(out.skipped)} skipped, in {time.monotonic() - started:.0f} s")
    print("\n".join(["ran:", *out.ran, "skipped:", *out.skipped]))
    assert not out.failures, (f"{len(out.failures)} README command(s) failed (fix the command or the code, or add "
                              f"it to SKIP in tests/test_readme.py with the reason):\n\n" + "\n\n".join(out.failures))
    assert len(out.ran) >= 30, out.ran


def test_a_new_failing_or_unknown_command_fails_the_test(tmp_path, warm):
    """What a README added later gets: its commands run; one that fails, or one this test cannot run and SKIP
    does not name, is reported (with the reason); a skipped one is listed with its reason."""
    readme = tmp_path / "README.md"
    readme.write_text("```bash\n"
                      "python run.py --cfg job                 # passes\n"
                      "python run.py trainer.batch_size=0      # bad input: status 2\n"
                      "frobnicate --all                        # not a command the test knows\n"
                      "torchrun --standalone --nproc_per_node=4 run.py   # on SKIP\n"
                      "```\n")
    out = run_readme(readme, tmp_path / "scratch", warm)
    assert [r.split("  [")[0] for r in out.ran] == ["README.md:2: python run.py --cfg job"], out
    assert len(out.skipped) == 1 and "torchrun" in out.skipped[0] and "test_distributed.py" in out.skipped[0]
    assert len(out.failures) == 2, out.failures
    assert "trainer.batch_size=0" in out.failures[0] and "exit status 2" in out.failures[0]
    assert "trainer.batch_size must be a positive integer" in out.failures[0]
    assert out.failures[1].startswith("README.md:4: frobnicate --all") and "add it to SKIP" in out.failures[1]


def make_recipe(argv: list[str], args: list[str]) -> list[str]:
    """What ``make <targets> ARGS=...`` would run (``make -n``): one ``python run.py ...`` line, as argv after
    the interpreter (``["run.py", ...]``)."""
    proc = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), *argv[1:], f"ARGS={' '.join(args)}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"^\S*python3? run\.py ", lines[0]), \
        f"{' '.join(argv)}: expected make to run one `python run.py ...` line, got {lines}"
    return shlex.split(lines[0])[1:]
