"""The evaluate stage: the rows of a run's evaluation (the config's own sampler settings, then
each ``eval.sweep`` value), one reference computed once for all of them, and per row: sample,
score, measure the sampling cost, write the record and the grid.

* `shapes`: the factor evaluator, the real held-out images' features, the tokenizer's ceiling
  and the untrained floor; domain and factor metrics.
* an image folder: Inception metrics by torch-fidelity (FID, IS, KID, precision/recall) against
  the held-out split (``eval.reference: dataset``) or an ADM reference batch (a path), with the
  tokenizer's reconstructions of the held-out images as the ceiling (rFID)."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark import distributed, records, results, speed
from benchmark.build import build_dataset, build_method, load_tokenizer, load_trained
from benchmark.config import ConfigError, section, validate
from benchmark.io import atomic_write
from benchmark.generation import balanced_labels, generate_images, to_uint8
from benchmark.keys import RunKeys
from benchmark.metrics import domain, fidelity
from benchmark.metrics import factors as fac
from benchmark.records import Row
from methods.base import Method, NotSupportedByDesign, Tokenizer
from methods.registry import METHODS, lookup


def save_npz(path: Path, **arrays) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:   # a file object: np.savez would append .npz to a name
            np.savez_compressed(f, **arrays)
    return atomic_write(path, write)


def psnr(recon: torch.Tensor, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of reconstructions of images in [-1, 1] (peak: the [0, 1] range)."""
    mse = ((recon - images) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


@torch.no_grad()
def reconstruct(tok: Tokenizer, images: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    return torch.cat([tok.decode(tok.encode(x.to(device))).clamp(-1, 1).cpu() for x in images.split(batch)])


@torch.no_grad()
def tokenizer_metrics(tok: Tokenizer, cfg: DictConfig, device: torch.device, n: int = 512) -> dict:
    """Reconstruction PSNR on held-out images; for a VQ, codebook usage on them too."""
    images, _ = build_dataset(cfg, "test").render(np.arange(n))
    metrics = {"psnr": psnr(reconstruct(tok, images, device, 128), images), "n_images": n}
    cached = torch.cat([tok.to_cache(x.to(device)) for x in images.split(128)])
    return {**metrics, **tok.usage(cached)}


# -- rows -----------------------------------------------------------------------------
def sweep_rows(cfg: DictConfig, method: str) -> list[tuple[DictConfig, str | None]]:
    """The rows of a run's evaluation: the config as it is, then one per value of each
    ``eval.sweep`` list (that setting alone changed, the others at the config's values). A row
    is a full config with its value set and the sweep emptied, so its evaluation key, record
    and grid are its own. A swept setting the method does not have gives one row with the
    reason it is not supported; a swept value equal to the config's is not evaluated twice."""
    cls, base = lookup(METHODS, method), copy.deepcopy(cfg)
    for key in base.eval.sweep:
        base.eval.sweep[key] = []
    rows = [(base, None)]
    for key, values in cfg.eval.sweep.items():
        if values and key != "patch_nums" and key not in cls.sampler_keys():
            row = copy.deepcopy(base)
            row.eval.sweep[key] = values
            rows.append((row, f"{cls.__name__} has no sampler setting {key!r} (it has: {', '.join(cls.sampler_keys())})"))
        elif values:
            rows += [(swept(base, method, key, value), None) for value in values]
    unique = {}
    for row, reason in rows:
        unique.setdefault(RunKeys.of(row, method).evaluation_key, (row, reason))
    return list(unique.values())


def swept(base: DictConfig, method: str, key: str, value) -> DictConfig:
    """``base`` with one sampler setting (or ``patch_nums``: eval.patch_nums) set to ``value``."""
    row = copy.deepcopy(base)
    try:
        if key == "patch_nums":
            row.eval.patch_nums = value
        else:
            OmegaConf.update(row, f"{method}.sampler.{key}", value, merge=False)
        validate(row)
    except (ConfigError, OmegaConfBaseException) as err:
        raise ConfigError(f"eval.sweep.{key}: {value!r} is not a valid value for {method} "
                          f"({str(err).splitlines()[0]})") from None
    return row


def row_settings(row: DictConfig, method: str, model: Method, side: int) -> dict:
    """A row's sampler settings: its method's sampler section, plus what its final latent ``side``
    and ``eval.patch_nums`` ask of the sampler (``Method.evaluation_settings``, which raises
    NotSupportedByDesign where the method cannot by construction)."""
    settings = OmegaConf.to_container(row[method].sampler, resolve=True)
    try:
        settings.update(model.evaluation_settings(side, list(row.eval.patch_nums)))
    except NotSupportedByDesign:   # a ValueError too, but the caller writes it as a row
        raise
    except ValueError as err:   # e.g. a scale list that does not end at the asked side
        raise ConfigError(f"{method}: {err}") from None
    return settings


def plan_rows(cfg: DictConfig, method: str, model: Method, side: int) -> list[Row]:
    """Every row with its settings, before any sampling: a bad value fails first."""
    rows = []
    for i, (row_cfg, reason) in enumerate(sweep_rows(cfg, method)):
        keys, configured = RunKeys.of(row_cfg, method), i == 0   # the first row is the config as it is
        try:
            if reason:
                raise NotSupportedByDesign(reason)
            rows.append(Row(row_cfg, keys, row_settings(row_cfg, method, model, side), configured=configured))
        except NotSupportedByDesign as err:   # a row that says so, never a silent fallback
            rows.append(Row(row_cfg, keys, note=f"not supported by design: {err}", configured=configured))
    return rows


# -- the reference ----------------------------------------------------------------------
@dataclass
class Reference:
    """What every row of a run's evaluation is scored against; computed once per run."""
    evaluator: Path          # the factor evaluator's weights (the torch-fidelity extractor loads them)
    features: dict           # domain features of the real held-out images
    labels: torch.Tensor     # the class-balanced labels every row samples
    class_names: list[str]
    values: dict             # the record's "reference": the ceiling (real, reconstructions) and the floor
    protocol: dict
    cells: dict              # real images and their reconstructions, a few per class, for the grids
    kind: str = "domain"     # domain (shapes: evaluator = the factor evaluator) | inception (evaluator = its
                             # weights, features = the reference batch: images and/or mu, sigma)

    def score(self, images: torch.Tensor, device: torch.device) -> dict:
        """The metrics of samples in [-1, 1] against this reference."""
        if self.kind == "inception":
            has_images = "images" in self.features
            return fidelity.fidelity_metrics(to_uint8(images), self.features, self.evaluator, kid=has_images,
                                             prc=has_images, device=device.type)
        return score(self.evaluator, images, self.labels, self.features, len(self.class_names), device)


def score(evaluator: Path, images: torch.Tensor, labels: torch.Tensor, reference: dict, num_classes: int,
          device: torch.device) -> dict:
    """Domain metrics of samples in [-1, 1], quantised to uint8 as a PNG would store them,
    against the reference features (``domain.extract_features`` of the real images)."""
    features = domain.extract_features(to_uint8(images), evaluator, device=device.type)
    return domain.domain_metrics(features, reference, labels, num_classes)


def build_reference(cfg: DictConfig, method: str, tok: Tokenizer, resolution: int, device: torch.device,
                    settings: dict) -> Reference:
    """The factor evaluator, the real held-out images' features, what the tokenizer makes of
    them (the ceiling) and, with ``eval.floor``, the untrained model sampled with ``settings``
    (the floor: what "no learning" scores)."""
    ev = section(cfg, "eval")
    train_set = build_dataset(cfg, resolution=resolution)
    k = train_set.num_classes
    evaluator = distributed.main_first(   # rank 0 trains and caches one if none ships; the others load it
        lambda: fac.evaluator_weights(cfg.data.variant, Path(cfg.paths.cache) / "evaluators"))
    real, real_labels = build_dataset(cfg, "reference", resolution=resolution).render(np.arange(ev.reference_size))
    real_feats = domain.extract_features(to_uint8(real), evaluator, device=device.type)
    recon = reconstruct(tok, real, device)
    recon_metrics = score(evaluator, recon, real_labels, real_feats, k, device)
    values = {"class_acc_real": float((domain.factors_of(real_feats)["label"] == real_labels.numpy()).mean()),
              "class_acc_recon": recon_metrics[domain.KEY_CLASS_CONSISTENCY],
              "domain_fd_recon": recon_metrics[domain.KEY_FD], "recon_psnr": psnr(recon, real),
              **{f"{m}_recon": recon_metrics[m] for m in domain.FACTOR_KEYS}}
    labels = balanced_labels(k, ev.samples_per_class)
    protocol = domain.protocol(evaluator, len(labels), len(real))
    if ev.floor:
        torch.manual_seed(cfg.seed)
        untrained = build_method(cfg, method, tok).to(device)
        images = generate_images(untrained, tok, labels, cfg.seed, ev.batch_size, device, "sample untrained",
                                 ev.autocast, **settings)
        floor = score(evaluator, images, labels, real_feats, k, device)
        values.update({f"untrained_{m}": floor[m] for m in (domain.KEY_CLASS_CONSISTENCY, domain.KEY_FD, "factor_hue_w1")})
        protocol["floor_sampler"] = untrained.sampler_settings(**settings)
    cells = {"real": results.grid_cells(real, real_labels)["cells"], "recon": results.grid_cells(recon, real_labels)["cells"]}
    return Reference(evaluator, real_feats, labels, list(train_set.class_names), values, protocol, cells)


def dataset_reference(cfg: DictConfig) -> Path:
    """The config's dataset as a reference batch (ADM layout): ``eval.reference_size`` held-out
    images (shapes: its reference split; an image folder: val/, centre-cropped) at the
    evaluation resolution, written once to the cache."""
    resolution = cfg.eval.resolution or cfg.data.resolution
    data = build_dataset(cfg, "reference", resolution=resolution)
    n = min(cfg.eval.reference_size, len(data))
    name = f"{cfg.data.name}-{cfg.data.variant if cfg.data.name == 'shapes' else Path(cfg.data.root).name}"
    path = Path(cfg.paths.cache) / "references" / f"{name}-{resolution}px-{n}.npz"
    if not path.exists():
        images = torch.cat([data.render(np.arange(i, min(i + 256, n)))[0] for i in range(0, n, 256)])
        atomic_write(path, lambda tmp: fidelity.write_reference(tmp, to_uint8(images)))
    print(f"reference: {path} ({n} images of {cfg.data.name} at {resolution} px)")
    return path


def inception_inputs(cfg: DictConfig) -> tuple[Path, Path]:
    """The Inception weights and the reference batch an image-folder evaluation needs, found
    (or refused) before any work: the weights from ``eval.inception_weights``,
    $SCALEWISE_INCEPTION_WEIGHTS or torch hub's cache; the reference from ``eval.reference``."""
    ev = section(cfg, "eval")
    if ev.reference != "dataset" and not Path(ev.reference).is_file():
        raise ConfigError(f"eval.reference={ev.reference!r} is not a file; give an ADM reference batch (.npz, e.g. "
                          "VIRTUAL_imagenet256_labeled.npz) or eval.reference=dataset (the held-out split)")
    weights = fidelity.inception_weights(ev.inception_weights or None)
    return weights, Path(ev.reference)


def build_inception_reference(cfg: DictConfig, tok: Tokenizer, resolution: int, device: torch.device) -> Reference:
    """The reference batch (images and/or statistics), and the tokenizer's ceiling: the rFID and
    PSNR of its reconstructions of the held-out images (when the reference has images)."""
    ev = section(cfg, "eval")
    weights, path = inception_inputs(cfg)
    path = dataset_reference(cfg) if ev.reference == "dataset" else path
    ref = fidelity.read_reference(path)
    if "images" in ref and ref["images"].shape[-1] != resolution:
        raise ConfigError(f"eval.reference={path} holds {ref['images'].shape[-1]} px images but the evaluation is at "
                          f"{resolution} px; give the reference batch of that resolution")
    data = build_dataset(cfg, "reference", resolution=resolution)
    k = data.num_classes
    real, real_labels = data.render(np.arange(min(ev.reference_size, len(data), 64 * k)))
    recon = reconstruct(tok, real, device)
    values = {"recon_psnr": psnr(recon, real)}
    if "images" in ref or "mu" in ref:
        values["fid_recon"] = fidelity.fidelity_metrics(to_uint8(recon), ref, weights, isc=False, kid=False, prc=False,
                                                        device=device.type)["frechet_inception_distance"]
    labels = balanced_labels(k, ev.samples_per_class)
    import torch_fidelity
    protocol = {"evaluator": f"torch-fidelity {torch_fidelity.__version__} {fidelity.FEATURE_EXTRACTOR}",
                "inception_weights": weights.name, "reference": str(path),
                "reference_kind": " + ".join(kind for kind, present in (("images", "images" in ref),
                                                                        ("statistics (mu, sigma)", "mu" in ref)) if present),
                "fid_against": "statistics (mu, sigma)" if "mu" in ref else "images",
                "num_reference": len(ref["images"]) if "images" in ref else None, "num_samples": len(labels),
                "num_recon": len(real), "isc_splits": 10, "resize": "torch-fidelity (bilinear, TF-compatible)"}
    cells = {"real": results.grid_cells(real, real_labels)["cells"], "recon": results.grid_cells(recon, real_labels)["cells"]}
    return Reference(weights, ref, labels, list(data.class_names), values, protocol, cells, kind="inception")


# -- the stage --------------------------------------------------------------------------
def evaluate_row(row: Row, model: Method, tok: Tokenizer, reference: Reference, resolution: int,
                 device: torch.device) -> Path:
    """One leaderboard row: sample with its settings, score against the reference, measure the
    sampling cost, write the record and the sample grid."""
    cfg, ev = row.cfg, section(row.cfg, "eval")
    start = time.time()
    images = generate_images(model, tok, reference.labels, cfg.seed, ev.batch_size, device,
                             f"sample {row.keys.method}", ev.autocast, **row.settings)
    sample_s = time.time() - start
    if not distributed.is_main():   # every rank has every image; rank 0 scores and writes
        return row.keys.record
    cost, cost_protocol = speed.sampling_cost(model, tok, cfg.data.num_classes, ev.batch_size, device,
                                              ev.throughput_repeats, **row.settings)
    metrics = {**reference.score(images, device), **cost}
    title = (f"{row.keys.method}, {cfg.preset}, seed {cfg.seed}, {resolution} px: "
             + records.sampler_text(model.sampler_settings(**row.settings)))
    grid = results.save_sample_grid(images, reference.labels, reference.class_names,
                                    row.keys.run_dir / f"samples-{row.keys.evaluation_key}.png", per_class=ev.grid_per_class,
                                    title=title)
    shared_grid = Path(cfg.paths.results) / "grids" / row.keys.record.with_suffix(".png").name
    shared_grid.parent.mkdir(parents=True, exist_ok=True)
    shared_grid.write_bytes(grid.read_bytes())
    cells = results.grid_cells(images, reference.labels)   # what the side-by-side figure shows
    save_npz(shared_grid.with_suffix(".npz"), **cells, **reference.cells, class_names=json.dumps(reference.class_names))
    record = records.make_record(row, model, resolution, metrics, reference.values, sample_s,
                                 {**reference.protocol, "cost": cost_protocol}, started=start,
                                 evaluate_s=time.time() - start)
    return records.write(row.keys, record)


def evaluate_method(cfg: DictConfig, method: str) -> list[Path]:
    """Sample, score and write one record (and sample grid) per row of ``sweep_rows``. The
    factor evaluator, the reference features, the tokenizer's ceiling and the untrained floor are
    computed once, for all rows."""
    if cfg.data.name != "shapes":   # found before sampling: a missing file fails now, not after the first row
        inception_inputs(cfg)
    device = distributed.resolve_device(cfg.device)
    tok = load_tokenizer(cfg, method, device)
    model = load_trained(cfg, method, tok, device)
    resolution = cfg.eval.resolution or cfg.data.resolution   # extrapolation: another size / scale list
    if resolution % tok.stride:
        raise ConfigError(f"eval.resolution={resolution} is not a multiple of the tokenizer's stride {tok.stride}")
    paths, reference = [], None
    for row in plan_rows(cfg, method, model, resolution // tok.stride):
        if row.note:
            paths.append(records.write(row.keys, records.make_record(row, model, resolution)))
            continue
        if reference is None:
            reference = (build_reference(cfg, method, tok, resolution, device, row.settings) if cfg.data.name == "shapes"
                         else build_inception_reference(cfg, tok, resolution, device))
        paths.append(evaluate_row(row, model, tok, reference, resolution, device))
    return paths


def finished_evaluation(cfg: DictConfig, method: str) -> list[Path] | None:
    """The records of this config's evaluation if every row of it ran here (records.finished)."""
    return records.finished([RunKeys.of(row, method) for row, _ in sweep_rows(cfg, method)])
