"""FID / IS / KID / precision-recall through torch-fidelity, usable offline.

torch-fidelity computes every metric here; this module only supplies what the suite's users
need around it:

* **the Inception weights, found offline**: an explicit path, ``$SCALEWISE_INCEPTION_WEIGHTS``,
  torch hub's cache (where torch-fidelity itself downloads them), or a download where the
  machine is online; otherwise one error naming the file and where to put it, before any
  sampling. The file is checked with ``torch.load(weights_only=True)`` before torch-fidelity
  (which loads it unrestricted) sees it.
* **in-memory uint8 images** as torch-fidelity inputs (the suite's one float -> uint8
  conversion happens before, so every method is scored on the same quantised pixels);
* **ADM reference batches** (``VIRTUAL_imagenet256_labeled.npz``: ``arr_0`` images N x H x W x 3
  uint8, ``mu``/``sigma`` Inception statistics): FID against the precomputed statistics goes
  through torch-fidelity's own Fréchet computation (``fid_statistics_to_metric``), precision /
  recall / KID need the reference images and refuse statistics alone.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ENV_WEIGHTS = "SCALEWISE_INCEPTION_WEIGHTS"
FEATURE_EXTRACTOR = "inception-v3-compat"
FID_LAYER = "2048"


class MissingWeightsError(FileNotFoundError):
    """The Inception weights are nowhere to be found and cannot be downloaded."""


def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return URL_INCEPTION_V3


def hub_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def check_weights(path: Path) -> Path:
    """A readable, tensors-only state dict with torch-fidelity's Inception head (1008 x 2048)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path} is not a safe, readable PyTorch weights file ({type(err).__name__}); expected "
                           f"torch-fidelity's {INCEPTION_FILE}") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if fc is None or tuple(fc.shape) != (1008, 2048):
        raise RuntimeError(f"{path} is not torch-fidelity's Inception-v3 ({INCEPTION_FILE}): no fc.weight of shape "
                           "(1008, 2048)")
    return path


def inception_weights(path: str | Path | None = None, download: bool = True) -> Path:
    """Where the Inception weights are: ``path``, ``$SCALEWISE_INCEPTION_WEIGHTS``, torch hub's
    cache, or downloaded there (where online). Fails with one message saying what to do."""
    explicit = path or os.environ.get(ENV_WEIGHTS)
    if explicit:
        if not Path(explicit).is_file():
            source = "given" if path else f"${ENV_WEIGHTS}"
            raise MissingWeightsError(f"Inception weights {explicit} ({source}) do not exist; download {inception_url()} "
                                      "there, or unset it to use torch hub's cache")
        return check_weights(Path(explicit))
    cached = hub_cache_path()
    if cached.is_file():
        return check_weights(cached)
    if download:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(inception_url(), str(cached), progress=False)
            return check_weights(cached)
        except Exception as err:   # offline compute node, proxy, ...
            reason = f" (download failed: {type(err).__name__})"
    else:
        reason = ""
    raise MissingWeightsError(
        f"the Inception weights {INCEPTION_FILE} are not available{reason}. On a machine with internet run "
        f"`python -m benchmark prefetch`, or download {inception_url()} and put it at {cached}, or point "
        f"${ENV_WEIGHTS} (or --inception-weights) at the file")


class UInt8Images(Dataset):
    """(N, 3, H, W) uint8 images as a torch-fidelity input."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


# -- ADM reference batches --------------------------------------------------------------------
def read_reference(path: str | Path) -> dict:
    """An ADM-layout npz: ``images`` (N, 3, H, W) uint8 from ``arr_0`` (N, H, W, 3) if present,
    and ``mu``/``sigma`` if present. At least one of the two."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch {path} does not exist (e.g. VIRTUAL_imagenet256_labeled.npz from "
                                "openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/)")
    with np.load(path, allow_pickle=False) as npz:
        out = {}
        if "arr_0" in npz:
            arr = npz["arr_0"]
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
                raise ValueError(f"{path}: arr_0 must be uint8 images (N, H, W, 3), got {arr.dtype} {arr.shape}")
            out["images"] = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        if "mu" in npz and "sigma" in npz:
            out["mu"], out["sigma"] = npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64)
        if not out:
            raise ValueError(f"{path} has neither arr_0 (images) nor mu/sigma (statistics); found {list(npz.keys())}")
    return out


def write_reference(path: str | Path, images: torch.Tensor | None = None, mu: np.ndarray | None = None,
                    sigma: np.ndarray | None = None) -> Path:
    """Write an ADM-layout npz (``arr_0`` N x H x W x 3 uint8, ``mu``, ``sigma``)."""
    arrays = {}
    if images is not None:
        arrays["arr_0"] = UInt8Images(images).images.permute(0, 2, 3, 1).numpy()
    if mu is not None:
        arrays["mu"], arrays["sigma"] = np.asarray(mu), np.asarray(sigma)
    with open(path, "wb") as f:   # a file object: np.savez would append ".npz" to a path without it
        np.savez(f, **arrays)
    return Path(path)


# -- metrics ----------------------------------------------------------------------------------
def features_to_statistics(features) -> dict:
    """{mu, sigma} of (N, D) features, fitted in float64 (torch-fidelity's own fit)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics
    return fid_features_to_statistics(torch.as_tensor(features).detach().cpu().to(torch.float64))


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """The one Fréchet distance of the suite: between two {mu, sigma} Gaussians (torch-fidelity's
    own computation, float64). Used for Inception FID and for the domain FD alike."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    cast = lambda s: {"mu": np.asarray(s["mu"], dtype=np.float64), "sigma": np.asarray(s["sigma"], dtype=np.float64)}
    return float(fid_statistics_to_metric(cast(stats_1), cast(stats_2), verbose=False)[KEY_METRIC_FID])


def inception_statistics(images: torch.Tensor, weights: Path, batch_size: int = 50, device: str = "cpu") -> dict:
    """{mu, sigma} of the Inception pool features (2048) of uint8 images, by torch-fidelity."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
    extractor = create_feature_extractor(FEATURE_EXTRACTOR, [FID_LAYER], cuda=device == "cuda",
                                         feature_extractor_weights_path=str(weights), verbose=False)
    features = get_featuresdict_from_dataset(UInt8Images(images), extractor, batch_size, device == "cuda", True, False)
    return features_to_statistics(features[FID_LAYER])


def fidelity_metrics(samples: torch.Tensor, reference: dict, weights: Path, isc: bool = True, fid: bool = True,
                     kid: bool = True, prc: bool = True, batch_size: int = 50, device: str = "cpu") -> dict:
    """torch-fidelity's IS (10 splits), FID, KID and precision/recall of uint8 ``samples``
    against ``reference`` (``read_reference``'s dict). FID is taken against the reference
    statistics where it has them (the ADM batch: mu/sigma of the whole training set), else
    against its images; KID and precision/recall need the images (the ADM batch's 10k) and are
    refused with statistics only."""
    import torch_fidelity
    has_images, has_stats = "images" in reference, "mu" in reference
    if (kid or prc) and not has_images:
        raise ValueError("KID and precision/recall need the reference images (the ADM batch's arr_0), not only "
                         "mu/sigma; give a reference with images or pass kid=False, prc=False")
    common = dict(cuda=device == "cuda", batch_size=batch_size, verbose=False, feature_extractor=FEATURE_EXTRACTOR,
                  feature_extractor_weights_path=str(weights), save_cpu_ram=True)
    out = {}
    if has_images and (kid or prc or (fid and not has_stats)):
        n = min(len(samples), len(reference["images"]))
        out.update(torch_fidelity.calculate_metrics(input1=UInt8Images(samples), input2=UInt8Images(reference["images"]),
                                                    isc=isc, fid=fid and not has_stats, kid=kid, prc=prc,
                                                    kid_subset_size=min(1000, n), **common))
    elif isc:
        out.update(torch_fidelity.calculate_metrics(input1=UInt8Images(samples), isc=True, **common))
    if fid and has_stats:
        out["frechet_inception_distance"] = frechet_distance(inception_statistics(samples, weights, batch_size, device),
                                                             reference)
    return {k: float(v) for k, v in out.items()}


# -- samples on disk --------------------------------------------------------------------------
def read_images(path: str | Path) -> torch.Tensor:
    """uint8 (N, 3, H, W) from an ADM-layout npz (``arr_0``) or a folder of PNG/JPEG files
    (sorted by name; the suite's ``sample`` command writes ``images/000000.png ...``)."""
    from PIL import Image
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        ref = read_reference(path)
        if "images" not in ref:
            raise ValueError(f"{path} holds statistics only (mu/sigma), not images")
        return ref["images"]
    folder = path / "images" if (path / "images").is_dir() else path
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg") and ".tmp." not in p.name)
    if not files:
        raise FileNotFoundError(f"no images in {path} (expected an .npz with arr_0, or a folder of .png files)")
    if any(f.suffix.lower() != ".png" for f in files):
        warnings.warn(f"{folder} holds JPEG files: lossy compression shifts FID; the protocol is PNG", stacklevel=2)
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"{folder}: images of different sizes {sorted({a.shape for a in arrays})[:3]}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def evaluate_folder(samples: str | Path, reference: str | Path, weights: Path, results: str | Path,
                    metrics: tuple[str, ...] = ("isc", "fid", "kid", "prc"), batch_size: int = 50,
                    device: str = "cpu") -> Path:
    """Score a folder / npz of samples against a reference (npz images and/or statistics, or
    a folder) and write the record into ``results/records`` (rebuilding the leaderboard)."""
    import hashlib
    import json
    from datetime import datetime, timezone

    import torch_fidelity

    from benchmark import results as results_mod
    samples, reference = Path(samples), Path(reference)
    images = read_images(samples)
    ref = read_reference(reference) if reference.suffix == ".npz" else {"images": read_images(reference)}
    has_images = "images" in ref
    if has_images and ref["images"].shape[-2:] != images.shape[-2:]:   # torch-fidelity would resize both silently
        raise ValueError(f"samples are {tuple(images.shape[-2:])} px but the reference images are "
                         f"{tuple(ref['images'].shape[-2:])} px; use the reference batch of the samples' resolution")
    wanted = {m: m in metrics and (has_images or m in ("isc", "fid")) for m in ("isc", "fid", "kid", "prc")}
    values = fidelity_metrics(images, ref, weights, batch_size=batch_size, device=device, **wanted)
    manifest_path = (samples if samples.is_dir() else samples.parent) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    key = hashlib.sha256(f"{samples.resolve()}|{reference.resolve()}|{sorted(metrics)}".encode()).hexdigest()[:10]
    record = {
        "method": manifest.get("method", samples.name), "preset": (manifest.get("config") or {}).get("preset", "external"),
        "dataset": reference.stem, "resolution": int(images.shape[-1]), "seed": manifest.get("seed", 0),
        "config_hash": key, "metrics": values,
        "protocol": {"evaluator": f"torch-fidelity {torch_fidelity.__version__} {FEATURE_EXTRACTOR}",
                     "inception_weights": str(weights),
                     "inception_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                     "samples": str(samples), "num_samples": len(images), "reference": str(reference),
                     "reference_kind": " + ".join(k for k, present in (("images", has_images),
                                                                      ("statistics (mu, sigma)", "mu" in ref)) if present),
                     "fid_against": "statistics (mu, sigma)" if "mu" in ref else "images",
                     "num_reference": len(ref["images"]) if has_images else None, "resize": "torch-fidelity (bilinear, TF-compatible)",
                     "isc_splits": 10, "sampler": manifest.get("sampler"), "quantization": manifest.get("quantization")},
        "created": datetime.now(timezone.utc).isoformat(),
    }
    out = results_mod.write_record(Path(results) / "records" / f"fidelity_{record['method']}_{key}.json", record)
    results_mod.rebuild_leaderboard(Path(results) / "records", results)
    return out
