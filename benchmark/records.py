"""A leaderboard row's record: one JSON file per evaluated setting, with the metrics, the
reference figures and the protocol that produced them, written to the run directory and to
``results/records`` (the leaderboard's source)."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import distributed
from benchmark.io import write_json
from benchmark.keys import RunKeys
from benchmark.provenance import provenance
from methods.base import Method


@dataclass
class Row:
    """One leaderboard row of a run's evaluation: its full config (a swept value set), its keys,
    the sampler settings the method is called with, or why it cannot be sampled."""
    cfg: DictConfig
    keys: RunKeys
    settings: dict = field(default_factory=dict)
    note: str | None = None        # "not supported by design: ..." rows have no samples
    configured: bool = True        # the config's own settings (False: a value of eval.sweep)


def sampler_text(settings: dict) -> str:
    """Sampler settings as one short cell: ``cfg=4 num_flow_steps=12`` (lists as 1-2-4; unset,
    None or [], left out)."""
    cell = lambda v: "-".join(map(str, v)) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, float) else str(v)
    return " ".join(f"{k}={cell(v)}" for k, v in settings.items() if v is not None and v != [])


def versions() -> dict:
    import diffusers
    import torch_fidelity
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "torch_fidelity": torch_fidelity.__version__,
            "python": platform.python_version()}


def protocol(row: Row, model: Method) -> dict:
    cfg = row.cfg
    return {"evaluator": "shapes-factors", "samples": cfg.eval.samples_per_class * cfg.data.num_classes,
            "samples_per_class": cfg.eval.samples_per_class, "reference": f"shapes/reference[0:{cfg.eval.reference_size}]",
            "quantization": "round((x+1)*127.5) to uint8", "seed_scheme": "per global image index",
            "sampler": model.sampler_settings(**row.settings),
            "device": str(distributed.resolve_device(cfg.device)), "threads": torch.get_num_threads(),
            "processes": distributed.world_size()}


def compute(cfg: DictConfig, method: str, train_info: dict) -> dict:
    """Training compute: steps x batch (images seen) and wall-clock seconds over all processes."""
    train = cfg.train
    return {"train_steps": train.steps, "batch_size": train.batch_size, "images_seen": train.steps * train.batch_size,
            "train_s": train_info.get("seconds"), "processes": train_info.get("processes", 1)}


def make_record(row: Row, model: Method, resolution: int, metrics: dict | None = None, reference: dict | None = None,
                sample_s: float = 0.0, extra_protocol: dict | None = None, started: float | None = None,
                evaluate_s: float | None = None) -> dict:
    """The record of one row; ``started`` (epoch seconds) when its evaluation began."""
    cfg, keys = row.cfg, row.keys
    tok_info = json.loads((keys.tokenizer_dir / "tokenizer.json").read_text())
    train_file = keys.run_dir / "train.json"
    train_info = json.loads(train_file.read_text()) if train_file.exists() else {}
    return {
        "method": keys.method, "preset": cfg.preset, "seed": cfg.seed, "config_hash": keys.evaluation_key,
        "train_hash": keys.train_hash, "dataset": cfg.data.name, "resolution": resolution,
        "train_resolution": cfg.data.resolution,
        "scales": "-".join(map(str, model.generated_scales(**row.settings))),
        "sampler": sampler_text(model.sampler_settings(**row.settings)), "configured": row.configured,
        "metrics": metrics or {}, "reference": reference or {},
        "tokenizer": {"key": keys.tokenizer_key,
                      **{k: tok_info[k] for k in ("name", "kind", "psnr", "scaling_factor", "codebook_usage_pct",
                                                  "dead_codes") if k in tok_info}},
        "timings": {"tokenizer_s": tok_info.get("seconds", 0.0), "train_s": train_info.get("seconds", 0.0),
                    "sample_s": sample_s, "evaluate_s": evaluate_s},
        "compute": compute(cfg, keys.method, train_info),
        "provenance": provenance(),
        "protocol": {**protocol(row, model), **(extra_protocol or {})},
        "versions": versions(), "config": OmegaConf.to_container(cfg, resolve=True),
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat() if started else None,
        "created": datetime.now(timezone.utc).isoformat(), "run_dir": str(keys.run_dir),
        **({"note": row.note, "scales": None} if row.note else {}),
    }


def write(keys: RunKeys, record: dict) -> Path:
    """The record in the run directory and in results/records; its path there. Under
    torch.distributed only rank 0 writes."""
    if distributed.is_main():
        write_json(keys.local_record, record)
        write_json(keys.record, record)
    return keys.record


def finished(rows: list[RunKeys]) -> list[Path] | None:
    """The records of an evaluation (one per row) if it ran here on these weights: each row's
    copy in the run directory (not in git, so checked-in results never stand in for a fresh
    run) and in results/records. None if any is missing."""
    paths = [p for keys in rows for p in (keys.local_record, keys.record)]
    return [keys.record for keys in rows] if all(p.exists() for p in paths) else None
