"""Every key and path of one (config, method), computed once and passed along.

A stage's output is cached under the hash of what it depends on, and nothing more:

* the tokenizer: the data and the tokenizer's section (``<name>-<hash>``, shared by every
  method and seed using it);
* a trained model: the data, training, the tokenizer and the method's model settings, but not
  its sampler settings (those only change what is generated from the same weights);
* a leaderboard row: the trained model, the sampler and the evaluation settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark.config import config_hash

# Settings added after runs were keyed: left out of the hashes while at these defaults, so that
# existing tokenizers, latents, runs and records keep their keys (their behaviour is unchanged).
LATER_DEFAULTS = {"data": {"augment": "none", "augment_views": 0},
                  "train": {"weight_decay_end": -1.0, "no_weight_decay": [], "ema_warmup": True, "tf32": True,
                            "skip_nonfinite": 0},
                  "eval": {"autocast": "off", "reference": "dataset"}}


SHIPPED = Path(__file__).resolve().parent / "shipped"   # paths.shipped=builtin


def shipped_dir(cfg: DictConfig) -> Path | None:
    """The folder of tokenizers shipped with the suite (``paths.shipped``: builtin, a folder, or
    none to always train)."""
    where = cfg.paths.get("shipped", "builtin")
    return None if where in (None, "", "none") else SHIPPED if where == "builtin" else Path(where)


def plain(node, section: str | None = None) -> dict | list:
    out = OmegaConf.to_container(node, resolve=True)
    if section == "eval":
        out.pop("inception_weights", None)   # where a file lies, not what is computed
    if out.get("autocast") == "False":       # `autocast=off` on the command line (YAML reads off as false)
        out["autocast"] = "off"
    for key, default in LATER_DEFAULTS.get(section, {}).items():
        if key in out and out[key] == default:
            del out[key]
    return out


def tokenizer_key(cfg: DictConfig, method: str) -> str:
    """``<name>-<hash>`` of the tokenizer a method uses: the data and the tokenizer's section."""
    name = cfg[method].tokenizer
    return f"{name}-{config_hash({'data': plain(cfg.data, 'data'), 'tokenizer': plain(cfg[name])})}"


def training_config(cfg: DictConfig, method: str) -> dict:
    """What a trained model depends on (its hash names the run directory)."""
    model = {k: v for k, v in plain(cfg[method]).items() if k != "sampler"}
    return {"data": plain(cfg.data, "data"), "train": plain(cfg.train, "train"), method: model,
            "tokenizer": plain(cfg[cfg[method].tokenizer])}


def evaluation_key(cfg: DictConfig, method: str) -> str:
    """The hash of everything behind a leaderboard row: the training config plus the sampler
    and evaluation settings. A swept value is in its row's own config; empty sweep lists are
    left out, so registering a method with new sampler settings changes no existing key."""
    sampler, evaluation = plain(cfg[method].sampler), plain(cfg.eval, "eval")
    sweep = {k: v for k, v in evaluation.pop("sweep", {}).items() if v}
    if sweep:   # only a "not supported" row keeps one
        evaluation["sweep"] = sweep
    return config_hash({"train": training_config(cfg, method), "sampler": sampler, "eval": evaluation})


@dataclass(frozen=True)
class RunKeys:
    method: str
    tokenizer: str         # the tokenizer's registry name (and config section)
    tokenizer_key: str     # <name>-<hash of data + tokenizer section>
    tokenizer_dir: Path    # cache/tokenizers/<tokenizer_key>: tokenizer.safetensors, tokenizer.json
    latents: Path          # cache/latents/<tokenizer_key>.safetensors: the encoded training set
    train_hash: str
    run_dir: Path          # runs/<preset>/<method>-<train_hash>/seed<N>: checkpoints, weights, records
    evaluation_key: str
    record: Path           # results/records/<preset>_<method>_<evaluation_key>_seed<N>.json

    @classmethod
    def of(cls, cfg: DictConfig, method: str) -> "RunKeys":
        tok_key, cache = tokenizer_key(cfg, method), Path(cfg.paths.cache)
        train_hash, key = config_hash(training_config(cfg, method)), evaluation_key(cfg, method)
        return cls(method=method, tokenizer=cfg[method].tokenizer, tokenizer_key=tok_key,
                   tokenizer_dir=cache / "tokenizers" / tok_key,
                   latents=cache / "latents" / f"{tok_key}.safetensors", train_hash=train_hash,
                   run_dir=Path(cfg.paths.runs) / cfg.preset / f"{method}-{train_hash}" / f"seed{cfg.seed}",
                   evaluation_key=key,
                   record=Path(cfg.paths.results) / "records" / f"{cfg.preset}_{method}_{key}_seed{cfg.seed}.json")

    @property
    def local_record(self) -> Path:
        """The row's copy in the run directory (not in git: proof that it was evaluated here)."""
        return self.run_dir / f"record-{self.evaluation_key}.json"
