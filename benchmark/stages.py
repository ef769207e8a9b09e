"""The stages of a run, each a plain function of the resolved config, cached by its hash:

    tokenizer (train or load) -> latents (encode the training set once) -> train -> evaluate

A finished stage is found by its hash and skipped; an interrupted training resumes from its
last checkpoint. Stages know nothing of how they are scheduled (see jobs/). Under
torch.distributed every rank runs the stage: training splits each batch, sampling splits the
image indices, and rank 0 alone writes.
"""
from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file, save_file

from benchmark import results
from benchmark.config import ConfigError, TrainConfig, config_hash, section, validate
from benchmark.metrics import classifier as clf
from benchmark.metrics import domain
from benchmark.trainer import Trainer
from jobs import distributed
from methods.base import Method, NotSupportedByDesign, TokenSpec
from methods.registry import DATASETS, METHODS, TOKENIZERS, lookup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    if name == "cuda" and distributed.is_distributed():   # one GPU per task
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def build_dataset(cfg: DictConfig, split: str = "train", resolution: int | None = None):
    data = section(cfg, "data")
    cls = lookup(DATASETS, data.name)
    if data.name == "imagefolder":
        if not data.root:
            raise ConfigError("data.root is not set; imagefolder needs data.root=/path/to/folder")
        folder = cls(root=data.root, resolution=resolution or data.resolution, split="train" if split == "train" else "val")
        if folder.num_classes != data.num_classes:
            raise ConfigError(f"data.num_classes={data.num_classes} but {data.root} has {folder.num_classes} class "
                              f"folders; set data.num_classes={folder.num_classes}")
        return folder
    # The data seed is fixed: every run seed trains and is scored on the same images.
    return cls(resolution=resolution or data.resolution, num_classes=data.num_classes, variant=data.variant,
               size=data.train_size, seed=0, split=split)


def atomic_save_file(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_weights(path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as err:
        raise RuntimeError(f"{path} is not a readable safetensors file ({err}); delete it and rerun to rebuild it") from err


# -- tokenizer ------------------------------------------------------------------------
def tokenizer_key(cfg: DictConfig, method: str) -> tuple[str, str]:
    name = cfg[method].tokenizer
    return name, f"{name}-{config_hash({'data': cfg.data, 'tokenizer': cfg[name]})}"


def train_tokenizer(cfg: DictConfig, method: str) -> Path:
    """Train (or load) the tokenizer ``cfg[method].tokenizer`` on the run's data; cached."""
    name, key = tokenizer_key(cfg, method)
    out = Path(cfg.paths.cache) / "tokenizers" / key
    if (out / "tokenizer.safetensors").exists():
        return out
    tcfg, device = section(cfg, name), resolve_device(cfg.device)
    tok_cls = lookup(TOKENIZERS, name)
    torch.manual_seed(0)   # the tokenizer is a function of its config and the data alone (as its cache key)
    tok = (tok_cls.from_pretrained(tcfg.pretrained, tcfg) if tcfg.pretrained else tok_cls(tcfg)).to(device)
    data = build_dataset(cfg)
    start = time.time()
    if not tcfg.pretrained:
        train_cfg = TrainConfig(steps=tcfg.steps, batch_size=tcfg.batch_size, lr=tcfg.lr, min_lr=tcfg.lr * 0.05,
                                warmup_steps=min(50, tcfg.steps // 10), weight_decay=0.0, grad_clip=1.0, ema_rate=0.0,
                                checkpoint_every=max(tcfg.steps // 4, 1), log_every=25, autocast="off")

        def batch_loss(step: int, g: torch.Generator) -> torch.Tensor:
            idx = np.arange(step * tcfg.batch_size, (step + 1) * tcfg.batch_size) % len(data)
            return tok.loss(data.render(distributed.shard(idx))[0].to(device), g)

        Trainer(tok, batch_loss, train_cfg, out / "train", seed=0, device=device, desc=f"tokenizer {name}").fit()
    tok.eval()
    if tok.kind == "continuous" and not tcfg.scaling_factor:  # unit-variance latents for the methods
        with torch.no_grad():
            lat = tok.encode(data.render(np.arange(min(1024, len(data))))[0].to(device))
        tok.scaling_factor.fill_(1.0 / lat.float().std().item() * float(tok.scaling_factor))
    if not distributed.is_main():
        distributed.barrier()
        return out
    metrics = tokenizer_metrics(tok, cfg, device)
    atomic_save_file(tok.state_dict(), out / "tokenizer.safetensors")
    scaling = {"scaling_factor": float(tok.scaling_factor)} if hasattr(tok, "scaling_factor") else {}
    (out / "tokenizer.json").write_text(json.dumps({"name": name, "kind": tok.kind, "config": OmegaConf.to_container(cfg[name]),
                                                    **scaling,
                                                    "seconds": time.time() - start, **metrics}, indent=2))
    distributed.barrier()
    return out


@torch.no_grad()
def tokenizer_metrics(tok, cfg: DictConfig, device: torch.device, n: int = 512) -> dict:
    """Reconstruction PSNR on held-out images; for a VQ, codebook usage on them too."""
    images, labels = build_dataset(cfg, "test").render(np.arange(n))
    recon = torch.cat([tok.decode(tok.encode(x.to(device))).clamp(-1, 1).cpu() for x in images.split(128)])
    metrics = {"psnr": psnr(recon, images), "n_images": n}
    if hasattr(tok, "usage"):
        metrics.update(tok.usage(torch.cat([tok.to_cache(x.to(device)) for x in images.split(128)])))
    return metrics


def psnr(recon: torch.Tensor, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of reconstructions of images in [-1, 1] (peak: the [0, 1] range)."""
    mse = ((recon - images) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


def load_tokenizer(cfg: DictConfig, method: str, device: torch.device):
    name, key = tokenizer_key(cfg, method)
    path = Path(cfg.paths.cache) / "tokenizers" / key
    tcfg = section(cfg, name)
    if not (path / "tokenizer.safetensors").exists():
        raise FileNotFoundError(f"no trained {name} tokenizer for this config at {path}; run the tokenizer stage first "
                                f"(python -m benchmark run --methods {method} --stages tokenizer ...)")
    tok = lookup(TOKENIZERS, name)(tcfg).to(device)
    tok.load_state_dict(load_weights(path / "tokenizer.safetensors"))
    return tok.eval()


# -- latents --------------------------------------------------------------------------
@torch.no_grad()
def encode_latents(cfg: DictConfig, method: str) -> Path:
    """Every training image encoded once (``tok.to_cache``: a KL's posterior moments, a VQ's
    token indices), reused by every method and seed that shares the tokenizer and data."""
    _, key = tokenizer_key(cfg, method)
    path = Path(cfg.paths.cache) / "latents" / f"{key}.safetensors"
    if path.exists():
        return path
    if not distributed.is_main():
        distributed.barrier()
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    tok, data = load_tokenizer(cfg, method, device), build_dataset(cfg)
    encoded, labels = [], []
    for start in range(0, len(data), 256):
        x, y = data.render(np.arange(start, min(start + 256, len(data))))
        encoded.append(tok.to_cache(x.to(device)).cpu())
        labels.append(y)
    atomic_save_file({"encoded": torch.cat(encoded), "labels": torch.cat(labels)}, path)
    distributed.barrier()
    return path


# -- method ---------------------------------------------------------------------------
def build_method(cfg: DictConfig, method: str, tok) -> Method:
    data = section(cfg, "data")
    spec = TokenSpec(channels=tok.channels, latent_size=data.resolution // tok.stride, num_classes=data.num_classes)
    return lookup(METHODS, method)(section(cfg, method), spec, tok)


def training_config(cfg: DictConfig, method: str) -> dict:
    """What a trained model depends on: data, training, tokenizer and the method's model
    settings, but not its sampler settings (those only change the evaluation)."""
    sampler_keys = lookup(METHODS, method).sampler_keys
    model = {k: v for k, v in OmegaConf.to_container(cfg[method]).items() if k not in sampler_keys}
    return {"data": cfg.data, "train": cfg.train, method: model, "tokenizer": cfg[cfg[method].tokenizer]}


def run_dir(cfg: DictConfig, method: str) -> Path:
    return Path(cfg.paths.runs) / cfg.preset / f"{method}-{config_hash(training_config(cfg, method))}" / f"seed{cfg.seed}"


def evaluation_key(cfg: DictConfig, method: str) -> str:
    """The hash of everything behind a leaderboard row: the training config plus the
    sampler and evaluation settings. A swept value is in its row's own config (``sweep_rows``);
    empty sweep lists are left out, so registering a method with new sampler settings
    changes no existing key."""
    sampler = {k: cfg[method][k] for k in lookup(METHODS, method).sampler_keys}
    evaluation = OmegaConf.to_container(cfg.eval, resolve=True)
    sweep = {k: v for k, v in evaluation.pop("sweep", {}).items() if v}
    if sweep:   # only a "not supported" row keeps one
        evaluation["sweep"] = sweep
    return config_hash({"train": training_config(cfg, method), "sampler": sampler, "eval": evaluation})


def train_method(cfg: DictConfig, method: str) -> Path:
    """Train the method on cached latents; resumes an interrupted run; skipped when done."""
    out = run_dir(cfg, method)
    if (out / "ema.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        OmegaConf.save(cfg, out / "config.yaml")
    device = resolve_device(cfg.device)
    tok = load_tokenizer(cfg, method, device)
    cache = load_weights(encode_latents(cfg, method))
    encoded, labels = cache["encoded"].to(device), cache["labels"].to(device)
    torch.manual_seed(cfg.seed)
    model = build_method(cfg, method, tok).to(device)
    train_cfg: TrainConfig = section(cfg, "train")
    n = len(labels)

    def batch_loss(step: int, g: torch.Generator) -> torch.Tensor:
        # Epoch-wise permutation from (seed, epoch): the data order is a function of the step.
        per_epoch = n // train_cfg.batch_size
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(device)
        idx = distributed.shard(perm[i * train_cfg.batch_size:(i + 1) * train_cfg.batch_size])
        inputs = tok.from_cache(encoded[idx], g)  # KL: a fresh posterior sample (as MAR/FlowAR); VQ: the tokens
        return model.loss(inputs, labels[idx], g)

    start = time.time()
    history = Trainer(model, batch_loss, train_cfg, out, seed=cfg.seed, device=device, desc=f"train {method}").fit()
    if not distributed.is_main():
        distributed.barrier()
        return out
    state = torch.load(out / "checkpoint-last.pt", map_location="cpu", weights_only=True)
    prefix = "model."
    net = lambda sd: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    atomic_save_file(net(state["model"]), out / "model.safetensors")
    atomic_save_file(net(state["ema"]), out / "ema.safetensors")
    (out / "train.json").write_text(json.dumps({"seconds": time.time() - start, "history": history,
                                                "processes": distributed.world_size()}))
    results.save_loss_curve([s for s, _ in history], [l for _, l in history], out / "loss.png")
    distributed.barrier()
    return out


# -- evaluation -----------------------------------------------------------------------
def image_seed(seed: int, index: int) -> int:
    """The seed of generated image ``index``: a function of the global index alone, so the
    same images come out whatever the batch size or number of workers."""
    return (seed * 2_654_435_761 + index * 40_503 + 1) % (2 ** 63)


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


@torch.no_grad()
def generate_batch(model: Method, tok, labels: torch.Tensor, indices, seed: int, device: torch.device,
                   **settings) -> torch.Tensor:
    """Images in [-1, 1] for ``labels``; image i is drawn from its own seed ``image_seed(seed, i)``;
    ``settings`` override the method's sampler."""
    gens = [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]
    return tok.decode(model.generate(labels.to(device), gens, **settings)).clamp(-1, 1)


@torch.no_grad()
def generate_images(model: Method, tok, labels: torch.Tensor, seed: int, batch_size: int,
                    device: torch.device, desc: str = "sample", **settings) -> torch.Tensor:
    """Images in [-1, 1] for ``labels``, image i seeded by its index (timing is
    ``benchmark.speed.sampling_cost``'s job). Distributed: each rank draws a contiguous part of
    the indices; all get every image."""
    from tqdm.auto import tqdm
    model.eval()
    mine = distributed.shard(range(len(labels)), total=len(labels))
    out = []
    for start in tqdm(range(mine.start, mine.stop, batch_size), desc=desc, dynamic_ncols=True,
                      disable=not distributed.is_main()):
        idx = range(start, min(start + batch_size, mine.stop))
        out.append(generate_batch(model, tok, labels[idx.start:idx.stop], idx, seed, device, **settings).cpu())
    return distributed.gather_cat(torch.cat(out) if out else torch.empty(0))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """The one float -> uint8 conversion used for every method's samples (scored or written
    to PNG): round((x + 1) * 127.5), clamped to [0, 255]. (B, 3, H, W) stays (B, 3, H, W)."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def score(classifier: Path, images: torch.Tensor, labels: torch.Tensor, reference: dict,
          device: torch.device) -> dict:
    """Domain metrics of samples in [-1, 1], quantised to uint8 as a PNG would store them,
    against the reference features (``domain.extract_features`` of the real images)."""
    features = domain.extract_features(to_uint8(images), classifier, device=device.type)
    return domain.domain_metrics(features, reference, labels)


@dataclass
class Reference:
    """What every row of a run's evaluation is scored against; computed once per run."""
    classifier: Path         # the domain classifier's weights (the torch-fidelity extractor loads them)
    features: dict           # domain features of the real held-out images
    labels: torch.Tensor     # the class-balanced labels every row samples
    class_names: list[str]
    values: dict             # the record's "reference": the ceiling (real, reconstructions) and the floor
    protocol: dict


def sweep_rows(cfg: DictConfig, method: str) -> list[tuple[DictConfig, str | None]]:
    """The rows of a run's evaluation: the config as it is, then one per value of each
    ``eval.sweep`` list (that setting alone changed, the others at the config's values). A row
    is a full config with its value set and the sweep emptied, so its evaluation key, record
    and grid are its own. A swept setting the method does not have gives one row with the
    reason it is not supported; a swept value equal to the config's is not evaluated twice."""
    cls = lookup(METHODS, method)
    base = copy.deepcopy(cfg)
    for key in base.eval.sweep:
        base.eval.sweep[key] = []
    rows = [(base, None)]
    for key, values in cfg.eval.sweep.items():
        if not values:
            continue
        if key != "patch_nums" and key not in cls.sampler_keys:
            row = copy.deepcopy(base)
            row.eval.sweep[key] = values
            rows.append((row, f"{cls.__name__} has no sampler setting {key!r} (it has: {', '.join(cls.sampler_keys)})"))
            continue
        for value in values:
            row = copy.deepcopy(base)
            try:
                if key == "patch_nums":
                    row.eval.patch_nums = value
                else:
                    OmegaConf.update(row, f"{method}.{key}", value, merge=False)
                validate(row)
            except (ConfigError, OmegaConfBaseException) as err:
                raise ConfigError(f"eval.sweep.{key}: {value!r} is not a valid value for {method} "
                                  f"({str(err).splitlines()[0]})") from None
            rows.append((row, None))
    seen, unique = set(), []
    for row, reason in rows:
        if evaluation_key(row, method) not in seen:
            seen.add(evaluation_key(row, method))
            unique.append((row, reason))
    return unique


def row_settings(row: DictConfig, method: str, model: Method, side: int) -> dict:
    """A row's sampler settings: its method section's, plus what its final latent ``side`` and
    ``eval.patch_nums`` ask of the sampler (``Method.evaluation_settings``, which raises
    NotSupportedByDesign where the method cannot by construction)."""
    own = OmegaConf.to_container(row[method], resolve=True)
    settings = {k: own[k] for k in model.sampler_keys}
    try:
        settings.update(model.evaluation_settings(side, list(row.eval.patch_nums)))
    except NotSupportedByDesign:   # a ValueError too, but the caller writes it as a row
        raise
    except ValueError as err:   # e.g. a scale list that does not end at the asked side
        raise ConfigError(f"{method}: {err}") from None
    return settings


def load_trained(cfg: DictConfig, method: str, tok, device: torch.device) -> Method:
    """The trained method of this config (``eval.weights``: EMA or raw), in eval mode."""
    out, weights = run_dir(cfg, method), cfg.eval.weights
    if not (out / f"{weights}.safetensors").exists():
        raise FileNotFoundError(f"{method} is not trained for this config ({out} has no {weights}.safetensors); run "
                                f"the train stage first (python -m benchmark run --methods {method} ...)")
    model = build_method(cfg, method, tok).to(device)
    model.load_weights(out / f"{weights}.safetensors")
    return model.eval()


def evaluate_method(cfg: DictConfig, method: str) -> list[Path]:
    """Sample, score and write one record (and sample grid) per row of ``sweep_rows``: the
    config's own sampler settings, then each swept value. The classifier, the reference
    features, the tokenizer's ceiling and the untrained floor are computed once, for all rows."""
    device = resolve_device(cfg.device)
    if cfg.data.name != "shapes":
        raise NotImplementedError("the domain evaluator needs data.name=shapes; score other data with "
                                  "`python -m benchmark sample` + `python -m benchmark evaluate` (Inception metrics)")
    tok = load_tokenizer(cfg, method, device)
    model = load_trained(cfg, method, tok, device)
    resolution = cfg.eval.resolution or cfg.data.resolution   # extrapolation: another size / scale list
    if resolution % tok.stride:
        raise ConfigError(f"eval.resolution={resolution} is not a multiple of the tokenizer's stride {tok.stride}")
    rows = []   # every row's settings before any sampling: a bad value fails first
    for row, reason in sweep_rows(cfg, method):
        try:
            if reason:
                raise NotSupportedByDesign(reason)
            rows.append((row, row_settings(row, method, model, resolution // tok.stride), None))
        except NotSupportedByDesign as err:   # a row that says so, never a silent fallback
            rows.append((row, {}, f"not supported by design: {err}"))
    paths, reference = [], None
    for row, settings, note in rows:
        if note:
            record = make_record(row, method, {}, {}, 0.0, model, {}, resolution)
            record.update(note=note, scales=None)
            paths.append(write_records(row, method, run_dir(row, method), record))
            continue
        reference = reference or build_reference(cfg, method, tok, resolution, device, settings)
        paths.append(evaluate_row(row, method, model, tok, reference, settings, resolution, device))
    return paths


def build_reference(cfg: DictConfig, method: str, tok, resolution: int, device: torch.device,
                    settings: dict) -> Reference:
    """The classifier, the real held-out images' features, what the tokenizer makes of them
    (the ceiling) and, with ``eval.floor``, the untrained model sampled with ``settings`` (the
    floor: what "no learning" scores)."""
    ev = section(cfg, "eval")
    train_set = build_dataset(cfg, resolution=resolution)
    classifier = distributed.main_first(   # rank 0 trains and caches it; the others load it
        lambda: clf.classifier_weights(train_set, Path(cfg.paths.cache) / "classifiers", steps=ev.classifier_steps))
    real, real_labels = build_dataset(cfg, "reference", resolution=resolution).render(np.arange(ev.reference_size))
    real_feats = domain.extract_features(to_uint8(real), classifier, device=device.type)
    with torch.no_grad():
        recon = torch.cat([tok.decode(tok.encode(x.to(device))).clamp(-1, 1).cpu() for x in real.split(256)])
    recon_metrics = score(classifier, recon, real_labels, real_feats, device)
    values = {"classifier_acc_real": float((real_feats[domain.LOGITS].argmax(1) == real_labels).double().mean()),
              "classifier_acc_recon": recon_metrics[domain.KEY_CLASS_CONSISTENCY],
              "classifier_fd_recon": recon_metrics[domain.KEY_FD], "recon_psnr": psnr(recon, real)}
    labels = balanced_labels(train_set.num_classes, ev.samples_per_class)
    protocol = domain.protocol(classifier, len(labels), len(real))
    if ev.floor:
        torch.manual_seed(cfg.seed)
        untrained = build_method(cfg, method, tok).to(device)
        images = generate_images(untrained, tok, labels, cfg.seed, ev.batch_size, device, "sample untrained",
                                    **settings)
        floor = score(classifier, images, labels, real_feats, device)
        values.update({f"untrained_{k}": floor[k] for k in (domain.KEY_CLASS_CONSISTENCY, domain.KEY_FD)})
        protocol["floor_sampler"] = untrained.sampler_settings(**settings)
    return Reference(classifier, real_feats, labels, list(train_set.class_names), values, protocol)


def evaluate_row(row: DictConfig, method: str, model: Method, tok, reference: Reference, settings: dict,
                 resolution: int, device: torch.device) -> Path:
    """One leaderboard row: sample with ``settings``, score against the reference, measure the
    sampling cost, write the record and the sample grid."""
    from benchmark import speed   # here: benchmark.speed imports this module
    ev, key = section(row, "eval"), evaluation_key(row, method)
    start = time.time()
    images = generate_images(model, tok, reference.labels, row.seed, ev.batch_size, device, f"sample {method}",
                                **settings)
    sample_s = time.time() - start
    if not distributed.is_main():   # every rank has every image; rank 0 scores and writes
        return record_path(row, method)
    cost, cost_protocol = speed.sampling_cost(model, tok, row.data.num_classes, ev.batch_size, device,
                                              ev.throughput_repeats, **settings)
    metrics = {**score(reference.classifier, images, reference.labels, reference.features, device), **cost}
    grid = results.save_sample_grid(images, reference.labels, reference.class_names,
                                    run_dir(row, method) / f"samples-{key}.png", per_class=ev.grid_per_class)
    shared_grid = Path(row.paths.results) / "grids" / f"{row.preset}_{method}_{key}_seed{row.seed}.png"
    shared_grid.parent.mkdir(parents=True, exist_ok=True)
    shared_grid.write_bytes(grid.read_bytes())
    record = make_record(row, method, metrics, reference.values, sample_s, model, settings, resolution,
                         {**reference.protocol, "cost": cost_protocol})
    return write_records(row, method, run_dir(row, method), record)


def record_path(cfg: DictConfig, method: str, key: str | None = None) -> Path:
    """Where the leaderboard's record of this evaluation lives."""
    key = key or evaluation_key(cfg, method)
    return Path(cfg.paths.results) / "records" / f"{cfg.preset}_{method}_{key}_seed{cfg.seed}.json"


def finished_evaluation(cfg: DictConfig, method: str) -> list[Path] | None:
    """The leaderboard records of this config's evaluation (one per sweep row) if it ran here
    on these weights: each row's copy in the run directory (not in git, so checked-in
    results never stand in for a fresh run) and in results/records. None if any is missing."""
    rows = [row for row, _ in sweep_rows(cfg, method)]
    local = [run_dir(row, method) / f"record-{evaluation_key(row, method)}.json" for row in rows]
    shared = [record_path(row, method) for row in rows]
    return shared if all(p.exists() for p in local + shared) else None


def write_records(cfg: DictConfig, method: str, out: Path, record: dict) -> Path:
    """The record in the run directory and in results/records (the leaderboard's source); its
    path. Under torch.distributed only rank 0 writes."""
    path = record_path(cfg, method, record["config_hash"])
    if distributed.is_main():
        results.write_record(out / f"record-{record['config_hash']}.json", record)
        results.write_record(path, record)
    return path


def make_record(cfg: DictConfig, method: str, metrics: dict, reference: dict, sample_s: float, model: Method,
                settings: dict | None = None, resolution: int | None = None, protocol: dict | None = None) -> dict:
    out = run_dir(cfg, method)
    tok_info = json.loads((Path(cfg.paths.cache) / "tokenizers" / tokenizer_key(cfg, method)[1] / "tokenizer.json").read_text())
    train_info = json.loads((out / "train.json").read_text()) if (out / "train.json").exists() else {}
    import diffusers, torch_fidelity
    return {
        "method": method, "preset": cfg.preset, "seed": cfg.seed, "config_hash": evaluation_key(cfg, method),
        "train_hash": out.parent.name.split("-")[-1],
        "dataset": cfg.data.name, "resolution": resolution or cfg.data.resolution, "train_resolution": cfg.data.resolution,
        "scales": "-".join(map(str, model.generated_scales(**(settings or {})))),
        "sampler": results.sampler_text(model.sampler_settings(**(settings or {}))),
        "metrics": metrics, "reference": reference,
        "tokenizer": {"key": tokenizer_key(cfg, method)[1],
                      **{k: tok_info[k] for k in ("name", "kind", "psnr", "scaling_factor", "codebook_usage_pct",
                                                  "dead_codes") if k in tok_info}},
        "timings": {"tokenizer_s": tok_info.get("seconds", 0.0), "train_s": train_info.get("seconds", 0.0),
                    "sample_s": sample_s},
        "protocol": {"evaluator": "shapes-classifier", "samples": cfg.eval.samples_per_class * cfg.data.num_classes,
                     "samples_per_class": cfg.eval.samples_per_class, "reference": f"shapes/reference[0:{cfg.eval.reference_size}]",
                     "quantization": "round((x+1)*127.5) to uint8", "seed_scheme": "per global image index",
                     "sampler": model.sampler_settings(**(settings or {})),
                     "device": str(resolve_device(cfg.device)), "threads": torch.get_num_threads(),
                     "processes": distributed.world_size(), **(protocol or {})},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "torch_fidelity": torch_fidelity.__version__, "python": platform.python_version()},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "created": datetime.now(timezone.utc).isoformat(), "run_dir": str(out),
    }
