"""Watching a sweep from its folder alone, from any process: each job's state, id and error
line, read from ``sweep.json``, submitit's result files and ``squeue`` while Slurm holds a job.
Nothing here imports torch, so `python -m benchmark status` answers at once."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from pathlib import Path

FINISHED, FAILED, LOST = "COMPLETED", "FAILED", "LOST"
ENDED = {FINISHED, FAILED, LOST, "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "SKIPPED"}


def find_sweep(run: str | None, cfg_runs: str = "runs") -> Path:
    """A sweep folder from a path, a folder name under runs/sweeps, or the newest one."""
    root = Path(cfg_runs) / "sweeps"
    if run:
        for candidate in (Path(run), root / run):
            if (candidate / "sweep.json").exists():
                return candidate
        raise FileNotFoundError(f"no sweep.json in {run!r} or {root / run}; pass the sweep folder that "
                                "`run` printed (or nothing, for the newest under runs/sweeps)")
    found = sorted(root.glob("*/sweep.json"))
    if not found:
        raise FileNotFoundError(f"no sweeps under {root}; start one with `python -m benchmark run ...`")
    return found[-1].parent


def job_state(job: dict, executor: str) -> tuple[str, str]:
    """(state, detail) of one job from its files, and from squeue while Slurm holds it."""
    result = Path(job["result"])
    if result.exists():
        try:
            with open(result, "rb") as f:
                outcome, value = pickle.load(f)
        except Exception as err:   # written by submitit in our own folder; unreadable means half-written
            return FAILED, f"unreadable result file {result}: {err}"
        # A failure's value is the traceback: its last line names the error.
        if outcome == "success":
            return FINISHED, ", ".join(value) if isinstance(value, list) else str(value)
        return FAILED, str(value).strip().splitlines()[-1]
    if executor == "slurm":
        out = subprocess.run(["squeue", "-h", "-j", job["job_id"], "-o", "%T|%r"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            state, reason = out.stdout.strip().splitlines()[0].split("|", 1)
            return state, "" if reason in ("None", "") else reason
        return LOST, f"not in the queue and no result; see {job['stderr']}"
    if Path(job["stderr"]).exists():   # local: the job id is its process id
        if not _alive(job.get("job_id")):
            return LOST, f"its process ended without a result (killed?); see {job['stderr']}; rerun the same command"
        return "RUNNING", ""
    return "PENDING", ""


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError):
        return True          # no process id recorded: cannot tell
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(folder: Path) -> list[dict]:
    try:
        sweep = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError) as err:
        from methods.config import ConfigError
        raise ConfigError(f"{folder / 'sweep.json'} cannot be read ({type(err).__name__}: {err}); the sweep's record "
                          "is damaged: its jobs' logs are in the folder's logs/, and rerunning the same `run` "
                          "command redoes only what is missing") from None
    rows = []
    for group in sweep["groups"]:
        for job in group["jobs"]:
            state, detail = job_state(job, sweep["executor"])
            rows.append({"group": group["name"], "job": job["name"], "id": job["job_id"], "state": state,
                         "detail": detail})
        rows += [{"group": group["name"], "job": name, "id": "-", "state": "SKIPPED", "detail": "a dependency failed"}
                 for name in group.get("skipped", [])]
    if "collect" in sweep:
        state, detail = job_state(sweep["collect"], sweep["executor"])
        rows.append({"group": "collect", "job": "leaderboard", "id": sweep["collect"]["job_id"], "state": state,
                     "detail": detail})
    return rows


def wait(folder: Path, poll_s: float = 5.0, log=print) -> list[dict]:
    """Poll ``status`` until every job has ended; prints each change of state."""
    seen: dict[str, str] = {}
    while True:
        rows = status(folder)
        for row in rows:
            if seen.get(row["job"]) != row["state"]:
                seen[row["job"]] = row["state"]
                log(f"[{row['job']}] {row['state']}" + (f": {row['detail']}" if row["detail"] else ""))
        if all(r["state"] in ENDED for r in rows):
            return rows
        time.sleep(poll_s)


def format_status(rows: list[dict]) -> str:
    import pandas as pd
    return pd.DataFrame(rows).to_string(index=False) if rows else "(no jobs)"

