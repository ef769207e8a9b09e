"""Running a sweep's groups (jobs/sweep.py) in this process, as local subprocesses or as
Slurm job arrays, all through submitit, and writing the sweep's record.

A sweep folder holds ``sweep.json`` (what was submitted: every job's name, id and group)
and submitit's logs and pickles under ``logs/``. Watching it is jobs/status.py's job.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from benchmark.io import write_text
from jobs.status import FINISHED, job_state
from jobs.sweep import Collect, Group


def sweep_folder(cfg: DictConfig) -> Path:
    root = Path(cfg.jobs.folder or Path(cfg.paths.runs) / "sweeps").resolve()
    return root / datetime.now().strftime("%Y%m%d-%H%M%S-%f")


# -- slurm ----------------------------------------------------------------------------
def slurm_parameters(jobs_cfg, gpus: bool = True) -> dict:
    """submitit SlurmExecutor parameters from the ``jobs`` config section."""
    tasks = (jobs_cfg.tasks_per_node or max(jobs_cfg.gpus_per_node, 1)) if gpus else 1
    params = {"time": jobs_cfg.timeout_min, "nodes": jobs_cfg.nodes if gpus else 1, "ntasks_per_node": tasks,
              "cpus_per_task": jobs_cfg.cpus_per_task, "mem": f"{int(jobs_cfg.mem_gb * 1024)}MB",
              "array_parallelism": jobs_cfg.array_parallelism, "setup": list(jobs_cfg.setup),
              "partition": jobs_cfg.partition, "account": jobs_cfg.account, "qos": jobs_cfg.qos,
              "constraint": jobs_cfg.constraint,
              "additional_parameters": {"kill-on-invalid-dep": "yes", **dict(jobs_cfg.sbatch)}}
    if gpus and jobs_cfg.gpus_per_node:
        params["gpus_per_node"] = jobs_cfg.gpus_per_node
    return {k: v for k, v in params.items() if v is not None}


def dependency(groups: list[Group], index: int, ids: dict[str, str]) -> str | None:
    """Train waits for all of prepare (afterok); evaluate task i for train task i (aftercorr)."""
    if index == 0:
        return None
    before, group = groups[index - 1], groups[index]
    kind = "aftercorr" if (before.name, group.name) == ("train", "evaluate") else "afterok"
    return f"{kind}:{ids[before.name]}"


def submit_slurm(groups: list[Group], cfg: DictConfig, folder: Path) -> dict:
    """Each group as one job array waiting for the one before; then a collect job."""
    executor = submitit.SlurmExecutor(folder=folder / "logs" / "%j", max_num_timeout=cfg.jobs.max_requeue)
    ids, record = {}, {"groups": []}
    for i, group in enumerate(groups):
        executor.update_parameters(job_name=f"scalewise-{group.name}", dependency=dependency(groups, i, ids),
                                   **slurm_parameters(cfg.jobs))
        with executor.batch():
            submitted = [executor.submit(job) for job in group.jobs]
        ids[group.name] = submitted[0].job_id.split("_")[0]
        record["groups"].append(group_record(group, submitted))
    executor.update_parameters(job_name="scalewise-collect", dependency=f"afterany:{ids[groups[-1].name]}",
                               **slurm_parameters(cfg.jobs, gpus=False))
    collector = executor.submit(Collect(str(Path(cfg.paths.results).resolve())))
    record["collect"] = {"name": "leaderboard", "job_id": collector.job_id, "stderr": str(collector.paths.stderr),
                         "result": str(collector.paths.result_pickle)}
    return record


def dry_run(groups: list[Group], cfg: DictConfig) -> str:
    """What `--executor slurm` would submit, with the sbatch headers submitit would write."""
    from submitit.slurm.slurm import _make_sbatch_string
    lines, ids = [], {g.name: f"<{g.name} array id>" for g in groups}
    folder = sweep_folder(cfg) / "logs" / "%j"
    for i, group in enumerate(groups):
        params = slurm_parameters(cfg.jobs)
        header = _make_sbatch_string(command="python -u -m submitit.core._submit ...", folder=folder,
                                     job_name=f"scalewise-{group.name}", map_count=len(group.jobs),
                                     dependency=dependency(groups, i, ids), **params)
        lines.append(f"== {group.name}: array of {len(group.jobs)} job(s), "
                     f"{params['nodes']} node(s) x {params['ntasks_per_node']} task(s) each")
        lines += [f"   [{k}] {job.name}: stages {', '.join(job.stages)}" for k, job in enumerate(group.jobs)]
        lines += ["   " + h for h in header.splitlines() if h.startswith("#SBATCH")]
    lines.append(f"== collect: 1 job after the last array ends (afterany), rebuilds {cfg.paths.results}/leaderboard.csv")
    return "\n".join(lines)


# -- local / inline -------------------------------------------------------------------
def run_local(groups: list[Group], cfg: DictConfig, folder: Path, log=print, save=lambda record: None) -> dict:
    """Groups in order; within a group up to ``jobs.parallel`` subprocesses at once (sharing
    the cores; evaluations one at a time). A job whose dependency failed is skipped (and says
    so). ``save(record)`` is called as jobs start and end, so that `status` sees a sweep under way."""
    executor = submitit.LocalExecutor(folder=folder / "logs" / "%j", max_num_timeout=cfg.jobs.max_requeue)
    executor.update_parameters(timeout_min=cfg.jobs.timeout_min, **local_resources(cfg))
    record, failed, running = {"groups": []}, set(), []
    with stopping_jobs_on_signals(lambda: [h for _, h in running], log,
                                  lambda: _show(running, cfg.jobs.parallel, every=0.0)):
        _run_groups(groups, cfg, executor, record, failed, running, log, save)
    return record


def _run_groups(groups, cfg, executor, record, failed, running, log, save) -> None:
    for group in groups:
        submitted = []
        runnable = [j for j in group.jobs if j.needs not in failed]
        for job in group.jobs:
            if job.needs in failed:
                failed.add(job.name)
                log(f"[{job.name}] skipped: {job.needs} failed")
        pending = list(runnable)
        # Evaluations one at a time: their throughput timings must have the machine to themselves.
        parallel = 1 if group.name == "evaluate" else max(1, min(cfg.jobs.parallel, len(runnable)))
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                if parallel > 1:
                    share_cores(job, parallel)
                running.append((job, submit_ignoring_sigint(executor, job)))
                submitted.append(running[-1])
                save({"groups": record["groups"] + [group_record(group, [h for _, h in submitted])]})
            time.sleep(0.5)
            _show(running, parallel)
            for job, handle in list(running):
                if handle.done():
                    _show([(job, handle)], parallel, every=0.0)
                    running.remove((job, handle))
                    state, detail = job_state({"result": str(handle.paths.result_pickle),
                                               "stderr": str(handle.paths.stderr)}, "local")
                    if state != FINISHED:
                        failed.add(job.name)
                        log(f"[{job.name}] FAILED: {detail}\n  log: {handle.paths.stderr}")
        record["groups"].append(group_record(group, [h for _, h in submitted],
                                             skipped=[j.name for j in group.jobs if j not in runnable]))
        save(record)


def share_cores(job, parallel: int) -> None:
    """``job`` runs beside ``parallel - 1`` others: its share of the cores (unless ``threads`` is
    set), on its own copy of the config, since a seed's train and evaluate jobs share one and
    evaluations, one at a time, get every core."""
    if not job.cfg.threads:
        job.cfg = OmegaConf.merge(job.cfg, {"threads": max(1, (os.cpu_count() or 1) // parallel)})


@contextlib.contextmanager
def stopping_jobs_on_signals(handles, log, show=lambda: None):
    """Ctrl-C or SIGTERM to this client (``kill PID``, ``timeout``) stops its local jobs: each
    job process gets SIGINT, which its trainer holds to the end of the step, checkpoints and
    ends on; the client waits for them, then stops too (rerun the same command to resume).
    submitit's controller process, started with SIGINT ignored (``submit_ignoring_sigint``),
    leaves the job to end by itself instead of dying with a traceback and killing it a second
    later. ``show()`` copies the jobs' output meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        active = [h for h in handles() if not h.done()]
        log(f"{signal.Signals(signum).name}: stopping {len(active)} job(s); each saves a checkpoint at the end "
            "of its step")
        signalled, deadline = set(), time.time() + 600
        while any(not h.done() for h in active) and time.time() < deadline:
            for pid in {pid for h in active for pid in _children(int(h.job_id))} - signalled:
                if not _ignores_sigint(pid):   # a job still starting up takes SIGINT back first
                    _kill(pid, signal.SIGINT)
                    signalled.add(pid)
            time.sleep(0.2)
        show()
        raise KeyboardInterrupt
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def submit_ignoring_sigint(executor, job):
    """``executor.submit(job)`` with SIGINT ignored meanwhile: the controller process submitit
    starts inherits that, and so do its job processes, which take SIGINT back when they start
    (``distributed.take_sigint``)."""
    if threading.current_thread() is not threading.main_thread():
        return executor.submit(job)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return executor.submit(job)
    finally:
        signal.signal(signal.SIGINT, previous)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (a local job's controller: its tasks)."""
    try:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(c) for c in path.read_text().split()]
    except OSError:   # no /proc (macOS)
        try:
            out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        except OSError:   # no pgrep either: nothing to signal, the client only waits
            return []
        return [int(c) for c in out.split()]


def _ignores_sigint(pid: int) -> bool:
    try:
        ignored = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    return bool(int(ignored.split()[1], 16) >> (signal.SIGINT - 1) & 1)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def local_resources(cfg: DictConfig) -> dict:
    """The GPUs and tasks of a local job. submitit hides every GPU from a local job unless
    asked (CUDA_VISIBLE_DEVICES=""): give it ``jobs.gpus_per_node`` GPUs (one by default when
    the run uses CUDA), one task per GPU, or ``jobs.tasks_per_node`` CPU tasks (gloo DDP)."""
    import torch
    params = {"tasks_per_node": cfg.jobs.tasks_per_node or 1}
    if cfg.device != "cpu" and torch.cuda.is_available():
        gpus = min(cfg.jobs.gpus_per_node or 1, torch.cuda.device_count())
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")   # keep the parent's choice of GPUs
        if visible:
            params["visible_gpus"] = [int(g) for g in visible.split(",") if g.strip().isdigit()]
        params.update(gpus_per_node=gpus, tasks_per_node=cfg.jobs.tasks_per_node or gpus)
    return params


_offsets: dict[Path, int] = {}
_in_traceback: set[Path] = set()
_TRACEBACK_GLUE = ("Traceback (most recent call last):", "During handling of the above exception",
                   "The above exception was the direct cause", "submitit ")


def _without_tracebacks(path: Path, lines: list[str]) -> list[str]:
    """A job's log lines without Python tracebacks (the FAILED line names the error and the log
    keeps the traceback); ``path``'s state carries over between reads."""
    out = []
    for line in lines:
        if line.startswith(_TRACEBACK_GLUE):
            if line.startswith("Traceback"):
                _in_traceback.add(path)
            continue
        if path in _in_traceback:
            if line[:1] in (" ", "\t", "\n", "") or line.startswith("^"):
                continue
            _in_traceback.discard(path)   # the exception line ends the traceback: the FAILED line repeats it
            continue
        out.append(line)
    return out


def _follow(handle) -> None:
    """Copy what a local job has written since the last call to this terminal (tracebacks left
    in the log file)."""
    for path, stream in ((handle.paths.stdout, sys.stdout), (handle.paths.stderr, sys.stderr)):
        if path.exists():
            with open(path, "rb") as f:
                f.seek(_offsets.get(path, 0))
                data = f.read()
            _offsets[path] = _offsets.get(path, 0) + len(data)
            text = data.decode(errors="replace")
            stream.write("".join(_without_tracebacks(path, text.splitlines(keepends=True))))
            stream.flush()


_last_shown: dict[Path, float] = {}


def _show(running, parallel: int, every: float = 20.0) -> None:
    """The running jobs' new output: as is for one job at a time, prefixed side by side."""
    if parallel == 1:
        for _, handle in running:
            _follow(handle)
    else:
        _follow_many(running, every)


def _follow_many(running, every: float = 20.0) -> None:
    """Jobs side by side: their log lines, each prefixed with its job's name, and each job's
    progress bar at most every ``every`` seconds (the latest state only)."""
    for job, handle in running:
        for path in (handle.paths.stdout, handle.paths.stderr):
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(_offsets.get(path, 0))
                data = f.read()
            cut = data.rfind(b"\n") + 1   # complete lines now; a progress bar's partial line waits
            bar = data[cut:].decode(errors="replace").split("\r")[-1].strip()
            _offsets[path] = _offsets.get(path, 0) + cut
            for line in _without_tracebacks(path, data[:cut].decode(errors="replace").splitlines(keepends=True)):
                line = line.split("\r")[-1].strip()
                if line:
                    print(line if line.startswith(f"[{job.name}]") else f"[{job.name}] {line}", flush=True)
            if bar and time.time() - _last_shown.get(path, 0.0) >= every:
                _last_shown[path] = time.time()
                print(f"[{job.name}] {bar}", flush=True)


# -- the sweep's record, status --------------------------------------------------------
def group_record(group: Group, submitted: list, skipped: list[str] = ()) -> dict:
    """The group's submitted jobs (in submission order) and the names of those skipped."""
    jobs = [{"name": job.name, "job_id": handle.job_id, "method": job.method, "seed": int(job.cfg.seed),
             "preset": job.cfg.preset, "stages": list(job.stages), "stdout": str(handle.paths.stdout),
             "stderr": str(handle.paths.stderr), "result": str(handle.paths.result_pickle)}
            for job, handle in zip([j for j in group.jobs if j.name not in skipped], submitted)]
    return {"name": group.name, "array_id": submitted[0].job_id.split("_")[0] if submitted else None,
            "jobs": jobs, "skipped": list(skipped)}


def write_sweep(folder: Path, cfg: DictConfig, executor: str, record: dict, argv: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"created": datetime.now(timezone.utc).isoformat(), "executor": executor, "command": argv,
              "results": str(Path(cfg.paths.results).resolve()), **record}
    return write_text(folder / "sweep.json", json.dumps(record, indent=2))
