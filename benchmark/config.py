"""Run configuration: typed sections, YAML presets, CLI dotlist overrides, strict validation.

A run's config is built in three layers, each merged onto an omegaconf structured schema so
that an unknown key or a wrongly typed value fails before any work:

    schema (the dataclasses below + each registered method's / tokenizer's Config)
      <- preset YAML (benchmark/configs/<preset>.yaml)
      <- CLI overrides (``train.steps=500 data.resolution=32 flowar.encoder_depth=4``)

Defaults live in the dataclasses only. Derived values (latent size, scale list) come from
functions, never from the config.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from benchmark.datasets.base import AUGMENTATIONS, DATASETS
from benchmark.presets import cluster_path, preset_name, preset_path
from methods.config import ConfigError, check_choice, check_positive, check_range, check_scale_list
from methods.plugins import PluginImportError, import_plugins
from methods.registry import METHODS, TOKENIZERS, lookup, names

__all__ = ["ConfigError", "RunConfig", "TrainConfig", "load_config", "load_saved", "validate", "section", "config_hash"]


@dataclass
class DataConfig:
    name: str = "shapes"
    resolution: int = 32          # training resolution in pixels
    num_classes: int = 8
    variant: str = "easy"          # shapes: easy | hard (smaller shapes, gradient backgrounds)
    train_size: int = 20000        # images in the training split (shapes renders this many)
    root: Optional[str] = None     # imagefolder: folder with one sub-folder per class
    # Training augmentation (imagefolder): none (the ADM centre crop) | flowar | var | flexvar (the
    # official pipelines, benchmark/datasets/imagefolder.py). With one, augment_views = 0 encodes
    # a fresh view of every image at every step (the official trainers), N > 0 caches N views of
    # each image in the latent cache and draws one per sample.
    augment: str = "none"
    augment_views: int = 0

    def check(self, key: str) -> None:
        check_choice(f"{key}.name", self.name, names(DATASETS))
        check_choice(f"{key}.resolution", self.resolution, [16, 32, 64, 128, 256, 512])
        check_positive(f"{key}.train_size", self.train_size)
        check_choice(f"{key}.variant", self.variant, ["easy", "hard"])
        check_choice(f"{key}.augment", self.augment, AUGMENTATIONS)
        check_positive(f"{key}.augment_views", self.augment_views, allow_zero=True)
        if self.augment != "none" and self.name == "shapes":
            raise ConfigError(f"{key}.augment={self.augment!r}: shapes renders every image fresh and has no training "
                              f"augmentation; use it with an image folder ({key}.name=imagefolder) or set "
                              f"{key}.augment=none")
        if self.name == "shapes":
            check_range(f"{key}.num_classes", self.num_classes, 2, 8)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    # After warm-up, lr to min_lr: cosine (MAR/FlowAR: linear warm-up from 0, half-cosine) |
    # linear | lin0 (VAR/FlexVAR's lr_wd_annealing: warm-up from 0.005 x lr, a plateau over 5% of
    # the post-warm-up steps, then linear to min_lr at the last step).
    schedule: str = "cosine"
    weight_decay: float = 0.02
    # < 0: constant weight decay. Else annealed from weight_decay to this over the whole run on a
    # half-cosine, as VAR's --twde (VAR-d30, d36-s: 0.05 -> 0.08).
    weight_decay_end: float = -1.0
    # Parameters without weight decay: 1-D ones and biases always; and any whose name contains one
    # of these (VAR/FlexVAR's nowd_keys, e.g. pos_1LC, pos_start, lvl_embed, scale_mul).
    no_weight_decay: List[str] = field(default_factory=list)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 3.0
    ema_rate: float = 0.999
    # Warm the EMA up (rate min(ema_rate, (1 + step) / (10 + step))) so short runs forget the
    # initialisation; false: ema_rate from the first step, as FlowAR's official trainer.
    ema_warmup: bool = True
    checkpoint_every: int = 500
    log_every: int = 25
    # Training precision: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 (autocast with VAR's
    # GradScaler: initial scale 2^11, growth every 1000 steps, capped at 2^15) | off (fp32).
    autocast: str = "auto"
    tf32: bool = True              # CUDA matmuls and convolutions in TF32 (all three official trainers)
    # Batches with a NaN/Inf loss that may be skipped (no update) before training stops; 0: stop
    # at the first, naming the step and the last good checkpoint.
    skip_nonfinite: int = 0

    def check(self, key: str) -> None:
        check_positive(f"{key}.skip_nonfinite", self.skip_nonfinite, allow_zero=True)
        for name in ("steps", "batch_size", "lr", "checkpoint_every", "log_every"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_positive(f"{key}.warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive(f"{key}.grad_clip", self.grad_clip, allow_zero=True)
        check_range(f"{key}.ema_rate", self.ema_rate, 0.0, 1.0)
        if self.autocast != "False":   # `autocast=off` on the command line: YAML reads off as false
            check_choice(f"{key}.autocast", self.autocast, ["auto", "bf16", "fp16", "off"])
        check_choice(f"{key}.schedule", self.schedule, ["cosine", "linear", "lin0"])
        if self.schedule == "lin0" and self.steps <= self.warmup_steps + 1:
            raise ConfigError(f"{key}.schedule=lin0 needs {key}.steps > {key}.warmup_steps + 1; got steps={self.steps}, "
                              f"warmup_steps={self.warmup_steps}")


@dataclass
class EvalConfig:
    samples_per_class: int = 100   # generated images per class
    batch_size: int = 100          # sampling batch size (also the large throughput batch; batch 1 is measured too)
    throughput_repeats: int = 3    # timed calls per batch size after a warm-up (the median is recorded)
    reference_size: int = 2000     # real images for the reference statistics
    floor: bool = True             # also evaluate the untrained model (the floor)
    weights: str = "ema"           # ema | model (the raw weights)
    grid_per_class: int = 8        # images per class row in the sample grid
    # Sampling precision on CUDA: off (fp32) | fp16 | bf16 autocast (the official VAR, FlexVAR and
    # FlowAR samplers run under fp16 autocast). CPU always samples in fp32.
    autocast: str = "off"
    # Image folders (Inception metrics): the reference, "dataset" (the held-out split, centre-
    # cropped, eval.reference_size images) or an ADM reference batch .npz; the Inception weights
    # ("": $SCALEWISE_INCEPTION_WEIGHTS, else torch hub's cache, else a download).
    reference: str = "dataset"
    inception_weights: str = ""
    # Extrapolation: generate and score at another resolution (0: the training one) or over
    # another scale list ([]: the method's own). Only methods with any-scale inference accept
    # them (FlexVAR); the others refuse by design.
    resolution: int = 0
    patch_nums: List[int] = field(default_factory=list)
    # eval.sweep (added by `schema()`, one list per sampler setting of any registered method,
    # plus patch_nums): every value of every non-empty list is evaluated as its own row, the
    # other settings at the config's values, e.g. eval.sweep.cfg=[1,2,4] or
    # eval.sweep.patch_nums=[[1,2,4,8],[1,2,3,4,6,8]] (benchmark/stages.py: sweep_rows).

    def check(self, key: str) -> None:
        for name in ("samples_per_class", "batch_size", "throughput_repeats", "reference_size",
                     "grid_per_class"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_choice(f"{key}.weights", self.weights, ["ema", "model"])
        if self.autocast != "False":   # YAML's reading of off
            check_choice(f"{key}.autocast", self.autocast, ["off", "fp16", "bf16"])
        if self.resolution:
            check_choice(f"{key}.resolution", self.resolution, [16, 32, 48, 64, 96, 128, 256, 384, 512, 1024])
        check_scale_list(f"{key}.patch_nums", self.patch_nums, allow_empty=True)
        for name, values in vars(getattr(self, "sweep", None) or object()).items():
            for value in values:
                if name == "patch_nums":
                    check_scale_list(f"{key}.sweep.patch_nums", value)
                elif value is None:
                    raise ConfigError(f"{key}.sweep.{name} has an empty value (null); give values, e.g. [1, 2]")


@dataclass
class PathsConfig:
    runs: str = "runs"             # run directories (checkpoints, samples, records); not in git
    cache: str = "cache"           # trained tokenizers, evaluators, latents, keyed by config hash
    results: str = "results"       # leaderboard, plots, grids (checked in)
    # Tokenizers trained by the suite and shipped with it (benchmark/shipped/tokenizers/<key>),
    # used instead of training one whose key (data + tokenizer settings) matches: "builtin",
    # a folder of that layout, or none to always train.
    shipped: Optional[str] = "builtin"


@dataclass
class JobsConfig:
    """How the stages are scheduled (jobs/); not part of any cache key. Cluster presets in
    jobs/clusters/*.yaml set these (``--cluster NAME``)."""
    executor: str = "local"        # inline (this process) | local (submitit subprocesses) | slurm
    folder: str = ""               # sweeps' logs and job pickles; "" = <paths.runs>/sweeps
    parallel: int = 1              # local: jobs at once (preparing and training; evaluations one at a time)
    timeout_min: int = 720         # per job; Slurm warns (SIGUSR2) 90 s before, the job checkpoints and requeues
    max_requeue: int = 3           # requeues after time-outs before giving up (preemptions don't count)
    # Slurm resources, per job of the array. One task per GPU (DDP); gpus_per_node=0: one CPU task.
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0        # 0: one per GPU (or 1 without GPUs); >1 on CPU: gloo DDP over CPU tasks
    cpus_per_task: int = 2
    mem_gb: float = 8.0
    array_parallelism: int = 64    # array tasks running at once
    setup: List[str] = field(default_factory=list)          # shell lines before the job, e.g. "source venv/bin/activate"
    sbatch: Dict[str, Any] = field(default_factory=dict)    # any other sbatch option, e.g. {exclude: node7}

    def check(self, key: str) -> None:
        check_choice(f"{key}.executor", self.executor, ["inline", "local", "slurm"])
        for name in ("parallel", "timeout_min", "nodes", "cpus_per_task", "mem_gb", "array_parallelism"):
            check_positive(f"{key}.{name}", getattr(self, name))
        check_positive(f"{key}.gpus_per_node", self.gpus_per_node, allow_zero=True)
        check_positive(f"{key}.tasks_per_node", self.tasks_per_node, allow_zero=True)
        check_positive(f"{key}.max_requeue", self.max_requeue, allow_zero=True)


@dataclass
class RunConfig:
    preset: str = "tiny"
    # Modules to import before the config is read: they register plug-in methods, tokenizers or
    # datasets from outside the suite (methods/plugins.py), e.g. custom_imports=[mypackage.method].
    custom_imports: List[str] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    threads: int = 0               # torch CPU threads; 0 = torch's default
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)

    def check(self, key: str = "") -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
        check_positive("threads", self.threads, allow_zero=True)


def sweep_keys() -> list[str]:
    """What ``eval.sweep`` may vary: every registered method's sampler settings and the scale list."""
    return sorted({"patch_nums", *(k for name in names(METHODS) for k in lookup(METHODS, name).sampler_keys())})


def schema() -> DictConfig:
    """The full schema: the run sections plus one section per registered tokenizer and method
    (named after it, typed by its ``Config`` dataclass), and ``eval.sweep`` with one list per
    sweepable setting (so an unknown sweep key fails like any unknown key)."""
    sweep = make_dataclass("SweepConfig", [(k, List[Any], field(default_factory=list)) for k in sweep_keys()])
    evaluation = make_dataclass("FullEvalConfig", [("sweep", sweep, field(default_factory=sweep))], bases=(EvalConfig,))
    extra = [(name, lookup(registry, name).Config, field(default_factory=lookup(registry, name).Config))
             for registry in (TOKENIZERS, METHODS) for name in names(registry)]
    extra.append(("eval", evaluation, field(default_factory=evaluation)))
    full = make_dataclass("FullConfig", extra, bases=(RunConfig,))
    cfg = OmegaConf.structured(full)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.jobs.sbatch, False)   # free-form sbatch options
    return cfg


def renamed_keys(container: dict) -> dict:
    """Sampler settings moved from ``<method>.<key>`` to ``<method>.sampler.<key>``: a config
    written the old way (a preset, a saved run config) is mapped, with a warning."""
    for name in names(METHODS):
        part = container.get(name)
        moved = [k for k in lookup(METHODS, name).sampler_keys() if isinstance(part, dict) and k in part]
        if moved:
            warnings.warn(f"{', '.join(f'{name}.{k}' for k in moved)}: sampler settings now live under "
                          f"{name}.sampler (e.g. {name}.sampler.{moved[0]}); read as such", FutureWarning, stacklevel=3)
            part.setdefault("sampler", {}).update({k: part.pop(k) for k in moved})
    return container


def renamed_override(item: str) -> str:
    """``flowar.cfg=3`` -> ``flowar.sampler.cfg=3`` (with a warning), as ``renamed_keys``."""
    key, _, value = item.partition("=")
    method, _, leaf = key.partition(".")
    if method in names(METHODS) and leaf in lookup(METHODS, method).sampler_keys():
        warnings.warn(f"{key} is now {method}.sampler.{leaf}; read as such", FutureWarning, stacklevel=3)
        return f"{method}.sampler.{leaf}={value}"
    return item


def load_yaml(path: Path) -> DictConfig:
    return OmegaConf.create(renamed_keys(OmegaConf.to_container(OmegaConf.load(path))))


def plugins_of(*parts) -> list[str]:
    """The ``custom_imports`` of configs and dotlist overrides, before the schema exists."""
    found = []
    for part in parts:
        if isinstance(part, list):   # overrides
            part = OmegaConf.from_dotlist([o for o in part if o.startswith("custom_imports=")])
        found += list(part.get("custom_imports") or [])
    return found


def _explain(err: OmegaConfBaseException, base: DictConfig) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in struct" in str(err) or "Key '" in str(err):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" Did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
        return ConfigError(f"unknown config key '{key}'. Valid keys here: {', '.join(valid)}.{hint}")
    msg = str(err).splitlines()[0]
    if key.startswith("eval.sweep."):
        msg += f"; a sweep is a list of values, e.g. {key}=[1.5,2,4]"
    return ConfigError(f"bad value for config key '{key}': {msg}")


def load_config(preset: str = "tiny", overrides: list[str] | None = None, cluster: str | None = None) -> DictConfig:
    """Schema <- preset <- cluster preset <- overrides, validated. Raises ConfigError naming
    the bad key."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=500)")
    try:
        preset_cfg = OmegaConf.load(preset_path(preset))
        import_plugins(plugins_of(preset_cfg, overrides or []))
        base = schema()
        cfg = OmegaConf.merge(base, load_yaml(preset_path(preset)))
        if cluster:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(cluster_path(cluster)))
        cfg.preset = preset_name(preset)
        cfg = apply_overrides(cfg, overrides)
    except PluginImportError as err:
        raise ConfigError(str(err)) from None
    except OmegaConfBaseException as err:
        raise _explain(err, schema()) from None
    validate(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str] | None) -> DictConfig:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.steps=500)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([renamed_override(item)]))
    return cfg


def load_saved(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """A config a run saved (its config.yaml) <- overrides, validated against today's schema."""
    try:
        import_plugins(plugins_of(OmegaConf.load(path), overrides or []))
        cfg = apply_overrides(OmegaConf.merge(schema(), load_yaml(Path(path))), overrides)
    except PluginImportError as err:
        raise ConfigError(str(err)) from None
    except OmegaConfBaseException as err:
        raise _explain(err, schema()) from None
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Instantiate every section (type checks) and run its range/choice checks."""
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, cfg) from None
    run.check()
    for f in fields(run):
        value = getattr(run, f.name)
        if is_dataclass(value) and hasattr(value, "check"):
            value.check(f.name)


def section(cfg: DictConfig, key: str):
    """A section as its typed dataclass (what models and stages receive)."""
    return OmegaConf.to_object(cfg[key])


def config_hash(obj: Any, length: int = 10) -> str:
    """Stable hash of a config (or part of one): the cache key for every stage."""
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    elif is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in fields(obj)}
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
