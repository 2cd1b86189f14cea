"""Run many short ``python <script> ...`` / ``python -m <module> ...`` commands fast: one warm interpreter
imports torch, Hydra and okd once, then forks a fresh child per command (``WarmPython``).

A child is what a new interpreter would be after those imports: its own process, working directory,
environment, ``sys.argv``, ``sys.path[0]`` (the script's folder) and stdout/stderr (files), and it runs the
script as ``__main__`` (runpy) and exits with the script's status. Hydra's global state is created in
the child only (the server never composes a config), so nothing leaks between commands. The server
itself stays single-threaded (fork safety): it only imports modules. What this saves is the 1.5–2 s of
imports per command on the 2-core CI machine (tests/test_readme.py runs ~40 README commands).

    with WarmPython() as py:
        result = py.run(["run.py", "experiment=smoke"], cwd=tmp_path, env={...}, timeout=120)
        result.returncode, result.stdout, result.stderr
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The server: preload, then per request (one JSON line on stdin) fork a child, wait (with a timeout),
# answer one JSON line on stdout. Children write their output to files, never to the protocol pipe.
SERVER = r'''
import json, os, runpy, signal, sys, time, traceback
os.environ.setdefault("OMP_NUM_THREADS", "1")
for name in PRELOAD:
    try:
        __import__(name)
    except Exception:  # a module that cannot be imported fails in the command itself, with its error
        pass
proto = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)  # stray prints of the server stay out of the protocol pipe
proto.write("ready\n"); proto.flush()
for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)
            out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1); os.dup2(err, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # never the protocol pipe
            os.chdir(req["cwd"])
            os.environ.clear(); os.environ.update(req["env"])
            argv = req["argv"]
            try:
                if argv[0] == "-m":
                    sys.argv = [argv[1], *argv[2:]]
                    sys.path[0] = req["cwd"]
                    sys.modules.pop(argv[1], None)  # preloaded: run it afresh as __main__, as `python -m` does
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = list(argv)
                    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                    runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr); code = 1
            except BaseException:
                traceback.print_exc(); code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    deadline = time.monotonic() + req["timeout"]
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.01)
    rc = os.waitstatus_to_exitcode(status)
    proto.write(json.dumps({"rc": rc, "timed_out": timed_out}) + "\n"); proto.flush()
'''

#: what the server imports once (what `python run.py` and the okd tools import anyway)
#: torch._dynamo: torch imports it lazily when the first optimizer is made, 2-6 s on the CI machine, which
#: every forked child would pay again
PRELOAD = ("torch", "torch._dynamo", "torchvision", "numpy", "hydra", "omegaconf", "matplotlib.pyplot", "PIL.Image",
           "okd.config", "okd.app", "okd.launch", "okd.errors", "okd.data.synthetic", "okd.data.nyuv2",
           "okd.data.cityscapes", "okd.models.segnet", "okd.models.resnet", "okd.models.mtan", "okd.models.vit",
           "okd.models.cross_stitch", "okd.kd.online", "okd.kd.offline", "okd.engine.trainer", "okd.predict",
           "okd.report", "okd.bench")


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool


class WarmPython:
    """A warm interpreter serving ``run(argv, cwd, env, timeout)``; ``argv`` as after ``python``:
    ``["run.py", ...]`` (a script path, relative to cwd or absolute) or ``["-m", "okd.report", ...]``."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, logs: Path | None = None):
        self.preload, self.logs, self.count, self.proc = preload, logs, 0, None

    def __enter__(self) -> "WarmPython":
        import tempfile

        self.logs = Path(self.logs or tempfile.mkdtemp(prefix="warm-python-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        code = f"PRELOAD = {list(self.preload)!r}\n{SERVER}"
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=ROOT, env=env, text=True)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"tests/warm_python.py: the server did not start (it said {ready!r})")
        return self

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
        assert self.proc is not None and self.proc.poll() is None, "the warm interpreter is not running"
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": dict(os.environ if env is None else env),
                   "stdout": str(out), "stderr": str(err), "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return Result(list(argv), answer["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"),
                      answer["timed_out"])

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
