"""Sweeps and launchers: sweep files compose, joblib/submitit/Optuna multiruns run, W&B agents group alike.

Subprocess runs use tiny synthetic data (32x32, 8 training images, one epoch); W&B stays offline.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, read_write

from okd import launch
from okd.config import compose as compose_cfg  # ${hydra:...} resolves as in a run
from okd.launch import GpuSlots, JobResources, direction, job_subdir, overrides_dirname, stl_runs
from tests.wandb_records import read_run

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RUN = str(ROOT / "run.py")
TINY = ["trainer.epochs=1", "dataset.train_size=8", "dataset.val_size=4", "dataset.test_size=4",
        "dataset.height=32", "dataset.width=32", "trainer.batch_size=4", "trainer.progress=false"]
SWEEPS = launch.sweep_files()
PAPER = [s for s in SWEEPS if s.startswith("paper_")]
HPARAMS = [s for s in SWEEPS if s.startswith("hparams_")]


def require_options(path: Path) -> None:
    """Skip when a sweep or experiment file (or a file it includes) selects a group option that does not
    exist yet: backbones, datasets, kd and weighting options come from other parts of the project."""
    text = path.read_text()
    for group, option in re.findall(r"override /([\w/]+): (\w+)", text):
        if option != "null" and not group.startswith("hydra") and not (CONF / group / f"{option}.yaml").is_file():
            pytest.skip(f"{path.relative_to(ROOT)} selects {group}={option}, but conf/{group}/{option}.yaml "
                        f"does not exist yet")
    for include in re.findall(r"^  - ([/\w]+)$", text, flags=re.M):
        nested = CONF / f"{include[1:]}.yaml" if include.startswith("/") else path.parent / f"{include}.yaml"
        require_options(nested)


def experiments(name: str) -> list[str]:
    """The paper presets (conf/experiment/) a paper sweep runs."""
    cfg = launch.compose_sweep(name)
    (override,) = OverridesParser.create().parse_overrides([f"experiment={cfg.hydra.sweeper.params['experiment']}"])
    return list(override.value().list)


def job_dir(cfg) -> str:
    """<hydra.sweep.dir>/<hydra.sweep.subdir> of a composed job, as run_job computes it."""
    return f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"


def okd_run(cwd: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    # one OpenMP thread per run: on a busy 2-core machine two spinning threads per process slow runs 10x
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([sys.executable, RUN, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"run.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wandb_run(run_dir: Path):
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return read_run(path)


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_file_composes_with_its_parameters(name):
    require_options(CONF / "sweep" / f"{name}.yaml")
    cfg = compose_cfg([f"+sweep={name}"])
    assert cfg.name == name  # the W&B group and the folder of the sweep
    assert cfg.hydra.sweep.dir == f"outputs/sweeps/{name}"
    assert cfg.trainer.resume == "auto"
    base_keys = set(OmegaConf.load(CONF / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    assert base_keys | {"sweep", "dataset.root"} <= set(cfg.hydra.job.config.override_dirname.exclude_keys)
    params = dict(cfg.hydra.sweeper.params)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    assert all(o.is_sweep_override() for o in parsed), params
    if name in HPARAMS:
        assert "OptunaSweeper" in cfg.hydra.sweeper._target_ and cfg.method == "okd"
        assert cfg.hydra.sweeper.direction == "minimize"  # selection.monitor=loss
        assert cfg.hydra.runtime.choices["kd"] == "okd" and cfg.weighting._target_.endswith("OTW")
        for key in params:  # every searched value exists in the job config
            assert OmegaConf.select(cfg, key) is not None, key
    else:
        assert params["seed"] == "0,1,2"
        # one command runs the whole comparison: KD-MTL too, in the staged sweeper's second stage
        assert experiments(name)[-1] == "kdmtl_sweep" and "kdmtl" not in experiments(name)
        assert cfg.hydra.sweeper._target_ == "hydra_plugins.okd_sweeper.StagedSweeper"


@pytest.mark.parametrize("name", PAPER)
def test_paper_sweeps_run_every_preset_under_the_sweep_protocol(name):
    require_options(CONF / "sweep" / f"{name}.yaml")
    base = launch.compose_sweep(name)
    tasks, protocol = list(base.dataset.tasks), base.hydra.runtime.choices.protocol
    grid = experiments(name)
    assert [e[4:] for e in grid if e.startswith("stl_")] == tasks  # one single-task baseline per task
    assert {"ew", "dwa", "uw", "gradnorm", "rlw"} <= set(grid) and any(e.startswith("okd") for e in grid)
    for experiment in [*grid, "kdmtl_sweep"]:
        require_options(CONF / "experiment" / f"{experiment}.yaml")
        cfg = compose_cfg([f"+sweep={name}", f"experiment={experiment}", "seed=1"])
        choices = cfg.hydra.runtime.choices
        # the sweep's protocol and name win over the preset's (the sweep config comes last)
        assert (choices.protocol, cfg.name, cfg.seed) == (protocol, name, 1)
        assert cfg.method == experiment  # a plain config value: W&B groups runs by it
        if experiment.startswith("stl_"):
            assert list(cfg.dataset.tasks) == [experiment[4:]]
            assert (choices.weighting, choices.kd) == ("ew", "none")
        elif experiment.startswith("okd"):
            assert (choices.weighting, choices.kd) == ("otw", "okd") and list(cfg.dataset.tasks) == tasks
        elif experiment == "kdmtl_sweep":
            assert (choices.weighting, choices.kd) == ("ew", "kdmtl")
        elif experiment in ("mtan", "cross_stitch"):
            assert (choices.backbone, choices.weighting, choices.kd) == (experiment, "ew", "none")
        else:
            assert (choices.weighting, choices.kd) == (experiment, "none") and list(cfg.dataset.tasks) == tasks


def set_output_dir(path: str) -> None:
    """What run_job does before the task function runs: the job's folder in HydraConfig."""
    with read_write(HydraConfig.instance().cfg.hydra):
        HydraConfig.instance().cfg.hydra.runtime.output_dir = path


def test_kdmtl_teachers_are_the_single_task_runs_of_the_same_sweep():
    extra = ["seed=1", "trainer.epochs=3", "trainer.device=cpu"]  # trainer.device: not in folder names
    cfg = compose_cfg(["+sweep=paper_synthetic_segnet", "experiment=kdmtl_sweep", *extra])
    set_output_dir(str(Path(job_dir(cfg)).resolve()))
    teachers = OmegaConf.to_container(cfg.kd, resolve=True)["teachers"]
    assert sorted(teachers) == ["depth", "normal", "segmentation"]
    for task, path in teachers.items():
        sibling = compose_cfg(["+sweep=paper_synthetic_segnet", f"experiment=stl_{task}", *extra])
        assert path == str(Path(job_dir(sibling)).resolve())
        assert Path(path).name == f"experiment=stl_{task},seed=1,trainer.epochs=3"
    # two tasks, the overrides in another order (a W&B agent's)
    compose_cfg(["trainer.epochs=3", "seed=1", "dataset.tasks=[depth,segmentation]", "experiment=kdmtl_sweep",
                 "+sweep=paper_synthetic_segnet"])
    set_output_dir("/sweep/dataset.tasks=[depth,segmentation],experiment=kdmtl_sweep,seed=1,trainer.epochs=3")
    assert stl_runs(["depth", "segmentation"]) == {
        "depth": "/sweep/dataset.tasks=[depth,segmentation],experiment=stl_depth,seed=1,trainer.epochs=3",
        "segmentation": "/sweep/dataset.tasks=[depth,segmentation],experiment=stl_segmentation,seed=1,trainer.epochs=3"}
    compose_cfg(["experiment=kdmtl_sweep", "seed=1"])  # outside a sweep: a clear error, not a wrong folder
    set_output_dir("/work/outputs/2026-01-01/12-00-00")
    with pytest.raises(ValueError, match="is not a job folder of a sweep"):
        stl_runs(["depth"])


def test_folder_names_follow_hydra_override_dirname():
    overrides = ["seed=2", "experiment=ew", "trainer.device=cpu", "+sweep=paper_synthetic_segnet", "trainer.epochs=1"]
    cfg = compose_cfg(overrides)
    settings = cfg.hydra.job.config.override_dirname
    mine = overrides_dirname(overrides, list(settings.exclude_keys), settings.item_sep, settings.kv_sep)
    assert mine == cfg.hydra.job.override_dirname == "experiment=ew,seed=2,trainer.epochs=1"
    assert cfg.hydra.sweep.subdir == mine  # short names stay readable
    assert job_subdir("kd.teachers.depth=/a/b") == "kd.teachers.depth=%2Fa%2Fb"  # one folder, not three
    long_a, long_b = "x=" + "1" * 300 + "a", "x=" + "1" * 300 + "b"
    short_a, short_b = job_subdir(long_a), job_subdir(long_b)
    assert len(short_a.encode()) <= launch.MAX_SUBDIR_BYTES and short_a != short_b  # unique and < 255 bytes
    assert short_a == job_subdir(long_a) and short_a.startswith("x=111")


def test_direction_follows_the_monitor():
    assert direction("loss") == "minimize"
    assert direction("segmentation/miou") == "maximize"
    assert direction("depth/abs_err") == "minimize"
    assert direction("normal/within_11.25") == "maximize"
    with pytest.raises(ValueError, match="selection.monitor='depth/miou'"):
        direction("depth/miou")
    cfg = compose_cfg(["+sweep=hparams_okd_synthetic_segnet", "selection.monitor=segmentation/miou"])
    assert cfg.hydra.sweeper.direction == "maximize"


def test_launcher_presets_compose(monkeypatch):
    cfg = compose_cfg(["hydra/launcher=okd_joblib"])
    assert cfg.hydra.launcher._target_ == launch.JOBLIB_TARGET
    assert cfg.hydra.callbacks.okd_resources._target_ == "okd.launch.JobResources"
    monkeypatch.setenv("OKD_SLURM_PARTITION", "gpu")
    cfg = compose_cfg(["hydra/launcher=okd_slurm"])
    slurm = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert slurm["_target_"].endswith("SlurmLauncher") and slurm["partition"] == "gpu"
    assert slurm["gpus_per_node"] == 1 and slurm["tasks_per_node"] == 1
    assert slurm["additional_parameters"] == {"signal": f"USR1@{slurm['signal_delay_s']}", "requeue": True}
    assert cfg.hydra.callbacks.okd_resume._target_ == "okd.launch.ResumeOnRequeue"


def test_slurm_script_requeues_on_the_signal_the_trainer_saves_on(tmp_path, monkeypatch):
    """The sbatch script submitit writes from okd_slurm: --signal=USR1@..., --requeue, one GPU; the
    trainer saves last.pt and requeues on that signal (okd/engine/trainer.py)."""
    from okd.engine.preemption import SIGNALS as PREEMPTION_SIGNALS

    pytest.importorskip("submitit")
    from hydra_plugins.okd_launcher import SlurmLauncher

    fake_srun = tmp_path / "bin" / "srun"  # submitit's SLURM executor insists on finding srun
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\nexit 0\n")
    fake_srun.chmod(fake_srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_cfg(["hydra/launcher=okd_slurm", "hydra.launcher.partition=gpu"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.okd_launcher.SlurmLauncher"
    params["submitit_folder"] = str(tmp_path / "%j")
    executor = SlurmLauncher(**params)._executor()  # the launcher's own mapping of its keys to sbatch's
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --signal=USR1@300", "#SBATCH --requeue", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --time=1440", "export SUBMITIT_PREEMPT_SIGNAL=USR1"):
        assert line in script.splitlines(), (line, script)
    assert signal.SIGUSR1 in PREEMPTION_SIGNALS and signal.SIGTERM in PREEMPTION_SIGNALS


def test_wandb_yamls_are_generated_from_the_hydra_sweeps():
    generated = launch.generated_wandb_yamls()
    on_disk = {p.name: p.read_text() for p in (ROOT / "sweeps" / "wandb").glob("*.yaml")}
    assert sorted(generated) == sorted(on_disk), "run `python -m okd.launch wandb --write`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"sweeps/wandb/{name} is stale: run `python -m okd.launch wandb --write`"
        spec = yaml.safe_load(text)
        assert spec["program"] == "run.py"
        assert spec["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
        sweep = spec["parameters"]["+sweep"]["value"]
        cfg = launch.compose_sweep(sweep)
        assert spec["name"] == name[:-5] and name.startswith(cfg.name)
        for key, param in spec["parameters"].items():
            assert set(param) in ({"value"}, {"values"}, {"distribution", "min", "max"}), (name, key)
        if sweep in HPARAMS:
            assert spec["method"] == "bayes" and spec["run_cap"] == cfg.hydra.sweeper.n_trials
            assert spec["metric"] == {"name": "best/val/loss", "goal": "minimize"}
            temperature = spec["parameters"]["weighting.temperature"]
            assert temperature == {"distribution": "log_uniform_values", "min": 0.02, "max": 2.0}
        elif name.endswith("_kdmtl.yaml"):
            assert spec["parameters"]["experiment"] == {"value": "kdmtl_sweep"}
        else:
            assert spec["method"] == "grid" and spec["parameters"]["seed"] == {"values": [0, 1, 2]}
            # W&B agents cannot wait for a stage: KD-MTL is the second W&B sweep (*_kdmtl.yaml)
            assert spec["parameters"]["experiment"]["values"] == [e for e in experiments(sweep) if e != "kdmtl_sweep"]


# ---------------------------------------------------------------------------------------------
# Launchers and sweepers, end to end (subprocesses)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    """3 jobs of the synthetic paper sweep on the joblib launcher, 2 pretend GPUs, W&B offline."""
    cwd = tmp_path_factory.mktemp("joblib")
    proc = okd_run(cwd, "-m", "+sweep=paper_synthetic_segnet", "hydra/launcher=okd_joblib", "experiment=ew",
                   "seed=0,1,2", "hydra.launcher.n_jobs=4", "hydra.callbacks.okd_resources.gpus=2",
                   f"hydra.callbacks.okd_resources.lock_dir={cwd / 'locks'}", *TINY)
    return cwd, proc


def test_joblib_multirun_gives_each_job_its_own_gpu_and_a_share_of_the_cores(joblib_sweep):
    cwd, proc = joblib_sweep
    sweep = cwd / "outputs" / "sweeps" / "paper_synthetic_segnet"
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert [r.name.split("seed=")[1].split(",")[0] for r in runs] == ["0", "1", "2"]
    assert "2 parallel job(s)" in proc.stdout  # n_jobs=4 asked, 2 GPU slots: the third job waits
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    gpu_of_process: dict[str, str] = {}
    for run in runs:
        (line,) = re.findall(r"job \d+ in process (\d+): CUDA_VISIBLE_DEVICES=(\S+), (\d+) CPU thread",
                             (run / "run.log").read_text())
        pid, gpu, n = line
        assert gpu in ("0", "1") and int(n) == threads
        assert gpu_of_process.setdefault(pid, gpu) == gpu  # a worker keeps its GPU
    assert len(set(gpu_of_process.values())) == len(gpu_of_process) <= 2  # two workers never share a GPU


def test_joblib_runs_are_grouped_tagged_and_named_in_wandb(joblib_sweep):
    cwd, _ = joblib_sweep
    for run_dir in (cwd / "outputs" / "sweeps" / "paper_synthetic_segnet").glob("*experiment=ew*"):
        record = wandb_run(run_dir)
        run = record["run"]
        assert run.run_group == "paper_synthetic_segnet"
        assert list(run.tags) == ["synthetic", "segnet", "ew", "kd-none"]
        assert run.display_name == f"paper_synthetic_segnet[{run_dir.name}]"  # named after its overrides
        assert record["config"]["method"] == "ew"


def test_wandb_agent_run_lands_and_groups_like_the_hydra_job(joblib_sweep, tmp_path):
    """A W&B agent runs `python run.py key=value ...` (${args_no_hyphens}) with WANDB_SWEEP_ID set:
    the run lands in the folder the Hydra job had and gets the same group, name and tags."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = yaml.safe_load((ROOT / "sweeps" / "wandb" / "paper_synthetic_segnet.yaml").read_text())
    chosen = {k: p["value"] if "value" in p else p["values"][0] for k, p in spec["parameters"].items()}
    chosen.update({"experiment": "ew", "seed": 0})
    assert "ew" in spec["parameters"]["experiment"]["values"]
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in chosen.items()}})["args_no_hyphens"]
    params = tmp_path / "params.yaml"  # what `wandb agent` writes for the run it starts
    params.write_text(yaml.safe_dump({k: {"value": v} for k, v in chosen.items()}))
    okd_run(tmp_path, *args, *TINY, env={"WANDB_SWEEP_ID": "sweep123", "WANDB_RUN_ID": "agentrun1",
                                         "WANDB_SWEEP_PARAM_PATH": str(params)})
    (agent_dir,) = (p.parent for p in (tmp_path / "outputs/sweeps/paper_synthetic_segnet").glob("*/summary.json"))
    (hydra_dir,) = (joblib_sweep[0] / "outputs" / "sweeps" / "paper_synthetic_segnet").glob("*seed=0*")
    assert agent_dir.name == hydra_dir.name
    agent, job = wandb_run(agent_dir)["run"], wandb_run(hydra_dir)["run"]
    assert agent.sweep_id == "sweep123" and agent.run_id == "agentrun1"  # W&B ties it to the sweep
    assert (agent.run_group, agent.display_name, list(agent.tags)) == (job.run_group, job.display_name, list(job.tags))


def test_submitit_local_multirun_runs_jobs_with_resume_auto(tmp_path):
    okd_run(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
            "+hydra.callbacks.okd_resume._target_=okd.launch.ResumeOnRequeue", "seed=0", "logger=none", *TINY)
    (run_dir,) = [p.parent for p in tmp_path.glob("outputs/multirun/*/*/*/summary.json")]
    assert list(run_dir.parent.glob(".submitit/*/*_result.pkl"))  # it ran as a submitit job
    assert "trainer.resume=auto" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["trainer"]["resume"] == "auto"
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1


def test_optuna_multirun_optimises_the_returned_monitor_in_its_direction(tmp_path):
    """run.py returns the best value of selection.monitor on the selection split; the sweep file's
    direction follows the monitor (an error metric: minimize) and Optuna reports the best trial.
    (The tiny runs' higher-is-better metrics are pixel counts that tie between trials; the maximize
    direction is checked on the composed config in test_direction_follows_the_monitor.)"""
    proc = okd_run(tmp_path, "-m", "+sweep=hparams_okd_synthetic_segnet", "hydra.sweeper.n_trials=2",
                   "selection.monitor=depth/abs_err", "kd.warmup_epochs=0", "logger=none", *TINY)
    assert "Directions: ['minimize']" in proc.stdout
    sweep = tmp_path / "outputs" / "sweeps" / "hparams_okd_synthetic_segnet"
    trials = []  # (value run.py returned, searched parameters of the trial)
    for path in sweep.glob("*/summary.json"):
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        searched = {o.split("=")[0]: float(o.split("=")[1]) for o in overrides
                    if o.startswith(("weighting.temperature=", "kd.task_weights."))}
        assert sorted(searched) == ["kd.task_weights.depth", "kd.task_weights.normal", "weighting.temperature"]
        best = json.loads(path.read_text())["best"]
        assert best["monitor"] == "depth/abs_err" and best["split"] == "val"
        trials.append((best["value"], searched))
    (low, low_params), (high, _) = sorted(trials, key=lambda t: t[0])
    assert low < high, "the two trials should differ (else the direction is untested)"
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(low) and result["best_params"] == pytest.approx(low_params)


# ---------------------------------------------------------------------------------------------
# Units: GPU slots and the joblib plan
# ---------------------------------------------------------------------------------------------
def test_gpu_slots_are_exclusive_and_jobs_beyond_them_wait(tmp_path):
    a, b, c = (GpuSlots(["0", "1"], lock_dir=tmp_path) for _ in range(3))
    assert (a.try_acquire(), b.try_acquire()) == ("0", "1")
    assert c.try_acquire() is None
    with pytest.raises(TimeoutError, match=r"no free GPU slot among GPUs \['0', '1'\]"):
        c.acquire(poll_s=0.01, timeout_s=0.05)
    a.release()
    assert c.acquire(poll_s=0.01, timeout_s=1) == "0"
    shared = [GpuSlots(["3", "5"], jobs_per_gpu=2, lock_dir=tmp_path / "s") for _ in range(4)]
    assert [s.try_acquire() for s in shared] == ["3", "5", "3", "5"]  # spread before sharing


def test_job_resources_plan_caps_jobs_at_gpu_slots_and_splits_cores():
    res = JobResources(gpus=2)
    res.pool = res.resolve_pool()
    assert res.pool == ["0", "1"]
    assert res.plan(-1, 16) == (2, 8)   # one job per GPU, 16 cores // 2
    assert res.plan(1, 16) == (1, 16)   # fewer jobs than GPUs is kept
    assert res.plan(4, 16) == (2, 8)    # more jobs than GPUs wait
    res.jobs_per_gpu = 2
    assert res.plan(-1, 16) == (4, 4)
    cpu = JobResources(gpus=[])
    cpu.pool = cpu.resolve_pool()
    assert cpu.plan(-1, 6) == (6, 1) and cpu.plan(3, 7) == (3, 2)
    assert JobResources(gpus=[], threads=3).plan(2, 16) == (2, 3)
    with pytest.raises(ValueError, match="jobs_per_gpu must be >= 1"):
        JobResources(jobs_per_gpu=0)


def test_every_multirun_ends_with_one_screen_listing_its_jobs(tmp_path):
    """Basic launcher, one job failing: the sweep still ends with every job, its status, headline and
    folder (and the failed job's error), after Hydra's own report of the failure."""
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, RUN, "-m", *TINY, "logger=none", "trainer.batch_size=4,0",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0  # Hydra reports the failed job
    screen = proc.stdout[proc.stdout.index(f"sweep {sweep}: 2 job(s), 1 done, 1 failed"):].splitlines()
    assert re.match(r"  done\s+loss \d\.\d+ \(val, epoch 0\)\s+0  .*trainer.batch_size=4", screen[1]), screen
    assert re.match(r"  failed\s+1  .*trainer.batch_size=0", screen[2]), screen
    assert "trainer.batch_size must be a positive integer, got 0" in screen[3]
    assert json.loads((sweep / "1" / "job_status.json").read_text())["status"] == "FAILED"


def test_an_ad_hoc_sweep_shares_one_wandb_group_and_names_runs_by_method_and_seed(tmp_path):
    """`-m weighting=ew,dwa seed=0,1` with no preset name: one W&B group of its own (not `default`),
    run names with the method and the seed, the group choices and the method as plain config keys."""
    okd_run(tmp_path, "-m", *TINY, "logger=wandb", "weighting=ew,dwa", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sw'}")
    runs = [read_run(p) for p in sorted((tmp_path / "sw").glob("*/wandb/offline-run-*/run-*.wandb"))
            if p.parts[-4] != "report"]
    assert len(runs) == 4 and len({r["run"].run_group for r in runs}) == 1
    group = runs[0]["run"].run_group
    assert group.startswith("default-") and group.endswith("-sw")
    assert sorted(r["run"].display_name.split(" [")[0] for r in runs) == \
        ["dwa seed=0", "dwa seed=1", "ew seed=0", "ew seed=1"]
    for r in runs:
        config = r["config"]
        assert config["method"] == config["weighting"] and config["kd"] == "none" and config["backbone"] == "segnet"
        assert config["dataset"] == "synthetic" and config["config"]["seed"] == config["seed"]
    assert_report_run(tmp_path / "sw", group, methods=2)


def assert_report_run(sweep: Path, group: str, methods: int) -> None:
    """The sweep ended with its report (okd.launch.sweep_report): the files in <sweep>/report/, and one W&B
    run of the jobs' group (job type report) with report.md's table, report.csv's numbers and the figures."""
    import csv

    out = sweep / "report"
    for name in ("report.md", "report.csv", "report.tex", "curves.png", "curves.pdf"):
        assert (out / name).stat().st_size > 0, name
    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    record = read_run(path)
    assert (record["run"].run_group, record["run"].job_type) == (group, "report")
    assert record["config"]["runs"] == 2 * methods and record["config"]["sweep_dir"] == str(sweep)
    (row,) = record["history"]
    assert row["comparison/_type"] == "table-file" and row["comparison/nrows"] == methods
    assert row["figures/curves/_type"] == "image-file" and row["figures/curves/format"] == "png"
    files = path.parent / "files"
    assert (files / row["figures/curves/path"]).stat().st_size > 0
    table = json.loads((files / row["comparison/path"]).read_text())
    assert table["columns"][:3] == ["method", "tasks", "seeds"] and "Δm % ↑" in table["columns"]
    markdown = (out / "report.md").read_text()
    for cells in table["data"]:  # report.md's table, cell for cell
        assert "| " + " | ".join(cells) + " |" in markdown
    numbers = json.loads((files / row["comparison_numbers/path"]).read_text())
    reported = {r["method"]: r for r in csv.DictReader(open(out / "report.csv"))}
    column = numbers["columns"].index("depth/abs_err_mean")
    assert sorted(cells[0] for cells in numbers["data"]) == sorted(reported)
    for cells in numbers["data"]:
        assert cells[column] == pytest.approx(float(reported[cells[0]]["depth/abs_err_mean"]))
