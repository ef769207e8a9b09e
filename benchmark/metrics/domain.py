"""Domain metrics for `shapes`: what the factor evaluator (benchmark/metrics/factors.py) reads
in generated images, compared with what it reads in real ones.

The evaluator is registered as a torch-fidelity feature extractor (``shapes-factors``), so FD,
KID, precision/recall and the IS-like score come out of torch-fidelity's own metric code on
its features, exactly as its Inception metrics do; only the feature space differs (these
features encode class, colour, size and position). Its outputs:

* ``shapes-features`` — the penultimate features (128), for ``domain_fd``, ``domain_kid``,
  ``domain_precision``, ``domain_recall``;
* ``shapes-logits``   — the class logits, for ``domain_is`` (torch-fidelity's ISC);
* ``shapes-factors``  — the class logits and the regressed factors, read back as factors;
* ``shapes-roughness`` — a pixel statistic, not the network: each image's median absolute
  Laplacian (in [0, 1] pixel units). Renders are flat or linear between edges, so it is about 0
  for them and grows with grain; the CNN, trained to ignore slight noise, does not see grain.
* ``shapes-hue-spread`` — a pixel statistic too: the circular standard deviation (turns) of the
  hue over the shape's pixels (chroma above ``SHAPE_CHROMA``: the shape, not the dull
  background). A shape is painted in one colour, so it is about 0 for renders and grows when a
  sample's shape is mottled or two-toned; the CNN reads one hue per image and does not see it.

Per factor, the predicted factors of the samples against those of the real reference images
(the same network reads both, so its small reading errors cancel):

* ``factor_hue_w1``      Wasserstein-1 of the hue distributions on the hue circle (turns; 0..0.5)
* ``factor_size_w1``     Wasserstein-1 of the size (radius / half-width)
* ``factor_position_w1`` mean Wasserstein-1 of the centre's x and y (half-widths)
* ``factor_class_tv``    total variation between the predicted class distributions (0..1)
* ``class_consistency`` share of samples read as the class they were generated for
* ``roughness_w1`` Wasserstein-1 of the per-image roughness (grain, noise)
* ``hue_spread_w1`` Wasserstein-1 of the per-image hue spread within the shape (turns)
* ``factor_hue_coverage``, ``factor_size_coverage``, ``factor_position_coverage`` share of the real factor range the
  samples reach: of the bins (hue: 12 on the circle; size: 8; position: 4 x 4, over the real
  range) that hold real images, those where the samples put at least a quarter of the real share.

Values are in this evaluator's spaces: not comparable with Inception FID / IS.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from benchmark.metrics import factors as fac
from benchmark.metrics.fidelity import UInt8Images, frechet_distance

FEATURE_EXTRACTOR = "shapes-factors"
FEATURES, LOGITS, FACTORS, ROUGHNESS = "shapes-features", "shapes-logits", "shapes-factors", "shapes-roughness"
HUE_SPREAD = "shapes-hue-spread"
SHAPE_CHROMA = 0.3   # easy variant: shapes have chroma >= 0.8 x 0.55, backgrounds <= 0.25 x 0.5

KEY_CLASS_CONSISTENCY = "class_consistency"
KEY_FD, KEY_KID, KEY_PRECISION, KEY_RECALL, KEY_IS = ("domain_fd", "domain_kid", "domain_precision", "domain_recall",
                                                      "domain_is")
FACTOR_KEYS = ("factor_hue_w1", "factor_size_w1", "factor_position_w1", "factor_class_tv", "factor_hue_coverage", "factor_size_coverage", "factor_position_coverage",
               "roughness_w1", "hue_spread_w1")
# Which way is better, for every metric a record holds (tables and validation read this).
HIGHER_IS_BETTER = {KEY_CLASS_CONSISTENCY: True, KEY_FD: False, KEY_KID: False, KEY_PRECISION: True, KEY_RECALL: True,
                    KEY_IS: True, "factor_hue_w1": False, "factor_size_w1": False, "factor_position_w1": False, "factor_class_tv": False,
                    "factor_hue_coverage": True, "factor_size_coverage": True, "factor_position_coverage": True, "roughness_w1": False,
                    "hue_spread_w1": False}
METRICS = tuple(HIGHER_IS_BETTER)

# torch-fidelity's defaults, fixed here so that the record can name them.
ISC_SPLITS, KID_SUBSETS, KID_SUBSET_SIZE, PRC_NEIGHBORHOOD = 10, 100, 1000, 3
HUE_BINS, SIZE_BINS, POSITION_BINS = 12, 8, 4


class ShapesFactorExtractor(FeatureExtractorBase):
    """The factor evaluator as a torch-fidelity feature extractor (uint8 in, float64 out:
    torch-fidelity fits its FID Gaussians in the extractor's dtype)."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if not feature_extractor_weights_path:
            raise ValueError(f"the {FEATURE_EXTRACTOR} feature extractor needs feature_extractor_weights_path=<a "
                             "shapes_factors_*.safetensors> (see benchmark.metrics.factors.evaluator_weights)")
        self.net = fac.load(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return FEATURES, LOGITS, FACTORS, ROUGHNESS, HUE_SPREAD

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": LOGITS, "fid": FEATURES, "kid": FEATURES, "prc": FEATURES}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8:
            raise ValueError(f"{FEATURE_EXTRACTOR} takes uint8 images (as every torch-fidelity extractor), got {x.dtype}")
        images = x.float() / 127.5 - 1                    # the inverse of generation.to_uint8
        f = self.net.features(images)
        logits = self.net.head(f)
        out = {FEATURES: f.double(), LOGITS: logits.double(), FACTORS: torch.cat([logits, self.net.regress(f)], 1).double(),
               ROUGHNESS: roughness(images)[:, None].double(), HUE_SPREAD: hue_spread(images)[:, None].double()}
        return tuple(out[name] for name in self.features_list)


def roughness(images: torch.Tensor) -> torch.Tensor:
    """Per image (B,): the median over pixels of the channel-mean absolute Laplacian of images
    in [-1, 1], in [0, 1] pixel units (edges are a minority of pixels, so the median sees flat
    regions: grain, noise, blocking)."""
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=images.dtype, device=images.device)
    c = images.shape[1]
    lap = torch.nn.functional.conv2d(images / 2, kernel.expand(c, 1, 3, 3), groups=c)
    return lap.abs().mean(1).flatten(1).median(1).values


def hue_spread(images: torch.Tensor, min_pixels: int = 8) -> torch.Tensor:
    """Per image (B,): the circular standard deviation, in turns, of the hue of the pixels whose
    chroma (max - min channel, in [0, 1]) exceeds SHAPE_CHROMA, each weighted by its chroma; 0
    for an image with fewer than ``min_pixels`` such pixels."""
    x = (images.float() + 1) / 2
    r, g, b = x.unbind(1)
    chroma = x.amax(1) - x.amin(1)
    angle = torch.atan2(3 ** 0.5 * (g - b), 2 * r - g - b)            # the hexagonal hue angle
    w = chroma * (chroma > SHAPE_CHROMA)
    total = w.flatten(1).sum(1)
    mean = (w * torch.polar(torch.ones_like(angle), angle)).flatten(1).sum(1) / total.clamp_min(1e-12)
    length = mean.abs().clamp(1e-12, 1.0)
    spread = torch.sqrt(-2 * torch.log(length)) / (2 * torch.pi)
    return torch.where((chroma > SHAPE_CHROMA).flatten(1).sum(1) >= min_pixels, spread, torch.zeros_like(spread))


if FEATURE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:   # torch-fidelity rejects a second registration
    register_feature_extractor(FEATURE_EXTRACTOR, ShapesFactorExtractor)


def extract_features(images: torch.Tensor, weights: str | Path, batch_size: int = 256,
                     device: str = "cpu") -> dict[str, torch.Tensor]:
    """{feature name: (N, D)} of uint8 images (N, 3, H, W), by torch-fidelity's extractor loop."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
    cuda = device == "cuda"
    extractor = create_feature_extractor(FEATURE_EXTRACTOR, [FEATURES, LOGITS, FACTORS, ROUGHNESS, HUE_SPREAD], cuda=cuda,
                                         feature_extractor_weights_path=str(weights), verbose=False)
    return get_featuresdict_from_dataset(UInt8Images(images), extractor, batch_size, cuda, True, False)


def factors_of(features: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The predicted factors (label, hue, size, x, y, ...) in an ``extract_features`` dict."""
    out = features[FACTORS].float().cpu()
    k = out.shape[1] - len(fac.REGRESSED)
    return {name: v.numpy() for name, v in fac.read_factors(out[:, :k], out[:, k:]).items()}


# --------------------------------------------------------------------------- factor distances
def w1(a: np.ndarray, b: np.ndarray, quantiles: int = 1000) -> float:
    """Wasserstein-1 between two 1-D samples: the mean gap between their quantile functions."""
    q = (np.arange(quantiles) + 0.5) / quantiles
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def circular_w1(a: np.ndarray, b: np.ndarray, bins: int = 720) -> float:
    """Wasserstein-1 on the unit circle (values in turns): with F - G the difference of the
    CDFs cut at any point, W1 = min over c of the integral of |F - G - c|, at c = its median."""
    edges = np.linspace(0, 1, bins + 1)
    d = np.cumsum(np.histogram(np.mod(a, 1), edges)[0] / len(a) - np.histogram(np.mod(b, 1), edges)[0] / len(b))
    return float(np.abs(d - np.median(d)).mean())


def total_variation(a: np.ndarray, b: np.ndarray, categories: int) -> float:
    pa, pb = (np.bincount(x.astype(np.int64), minlength=categories)[:categories] / len(x) for x in (a, b))
    return float(0.5 * np.abs(pa - pb).sum())


def coverage(sample_bins: np.ndarray, real_bins: np.ndarray, bins: int) -> float:
    """Share of the bins holding real images (at least half a uniform share) where the samples
    put at least a quarter of the real share."""
    real = np.bincount(real_bins, minlength=bins) / len(real_bins)
    fake = np.bincount(sample_bins, minlength=bins) / len(sample_bins)
    occupied = real >= 0.5 / bins
    return float((fake[occupied] >= 0.25 * real[occupied]).mean())


def _bin(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    return np.clip(((values - lo) / max(hi - lo, 1e-9) * bins).astype(np.int64), 0, bins - 1)


def factor_metrics(samples: dict[str, np.ndarray], real: dict[str, np.ndarray], num_classes: int) -> dict[str, float]:
    """The per-factor distances and coverages of predicted sample factors against real ones."""
    out = {"factor_hue_w1": circular_w1(samples["hue"], real["hue"]), "factor_size_w1": w1(samples["size"], real["size"]),
           "factor_position_w1": 0.5 * (w1(samples["x"], real["x"]) + w1(samples["y"], real["y"])),
           "factor_class_tv": total_variation(samples["label"], real["label"], max(num_classes, int(real["label"].max()) + 1))}
    hue = lambda f: _bin(np.mod(f["hue"], 1), 0, 1, HUE_BINS)
    out["factor_hue_coverage"] = coverage(hue(samples), hue(real), HUE_BINS)
    lo, hi = real["size"].min(), real["size"].max()
    out["factor_size_coverage"] = coverage(_bin(samples["size"], lo, hi, SIZE_BINS), _bin(real["size"], lo, hi, SIZE_BINS),
                                    SIZE_BINS)
    cell = lambda f: (_bin(f["x"], real["x"].min(), real["x"].max(), POSITION_BINS) * POSITION_BINS
                      + _bin(f["y"], real["y"].min(), real["y"].max(), POSITION_BINS))
    out["factor_position_coverage"] = coverage(cell(samples), cell(real), POSITION_BINS ** 2)
    return out


# --------------------------------------------------------------------------- all domain metrics
def domain_metrics(samples: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                   labels: torch.Tensor | None = None, num_classes: int | None = None,
                   kid_subset_size: int = KID_SUBSET_SIZE) -> dict[str, float]:
    """FD, KID, precision/recall and the IS-like score of sample features against reference
    features (``extract_features``' dicts), each by torch-fidelity's own function; the factor
    metrics; with ``labels`` (the conditioning classes), the class consistency. KID subsets
    shrink to the smaller set when it has fewer than ``kid_subset_size`` images."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_featuresdict_to_metric
    n = min(len(samples[FEATURES]), len(reference[FEATURES]))
    kwargs = dict(verbose=False, isc_splits=ISC_SPLITS, kid_subsets=KID_SUBSETS, kid_subset_size=min(kid_subset_size, n),
                  prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=True)
    fid = frechet_distance(fid_featuresdict_to_statistics(samples, FEATURES),
                           fid_featuresdict_to_statistics(reference, FEATURES))
    kid = kid_featuresdict_to_metric(samples, reference, FEATURES, **kwargs)
    prc = prc_featuresdict_to_metric(samples, reference, FEATURES, **kwargs)
    isc = isc_featuresdict_to_metric(samples, LOGITS, **kwargs)
    out = {KEY_FD: fid, KEY_KID: kid[KEY_METRIC_KID_MEAN], KEY_PRECISION: prc[KEY_METRIC_PRECISION],
           KEY_RECALL: prc[KEY_METRIC_RECALL], KEY_IS: isc[KEY_METRIC_ISC_MEAN]}
    sample_factors = factors_of(samples)
    out.update(factor_metrics(sample_factors, factors_of(reference), num_classes or reference[LOGITS].shape[1]))
    out["roughness_w1"] = w1(samples[ROUGHNESS][:, 0].cpu().numpy(), reference[ROUGHNESS][:, 0].cpu().numpy())
    if HUE_SPREAD in samples and HUE_SPREAD in reference:   # features cached before it existed have none
        out["hue_spread_w1"] = w1(samples[HUE_SPREAD][:, 0].cpu().numpy(), reference[HUE_SPREAD][:, 0].cpu().numpy())
    if labels is not None:
        out[KEY_CLASS_CONSISTENCY] = float((sample_factors["label"] == labels.cpu().numpy()).mean())
    return {k: float(v) for k, v in out.items()}


def protocol(weights: Path, num_samples: int, num_reference: int) -> dict:
    """How the domain metrics were computed, for the record."""
    import torch_fidelity
    return {"evaluator": f"torch-fidelity {torch_fidelity.__version__}, feature extractor {FEATURE_EXTRACTOR}",
            "evaluator_weights": Path(weights).name,
            "evaluator_sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest(),
            "features": f"{FEATURES} (FD, KID, precision/recall), {LOGITS} (IS-like score), {FACTORS} (factor "
                        f"metrics), {ROUGHNESS} (roughness_w1), {HUE_SPREAD} (hue_spread_w1), float64",
            "factor_bins": {"hue": HUE_BINS, "size": SIZE_BINS, "position": f"{POSITION_BINS}x{POSITION_BINS}"},
            "isc_splits": ISC_SPLITS, "kid_subsets": KID_SUBSETS,
            "kid_subset_size": min(KID_SUBSET_SIZE, num_samples, num_reference),
            "prc_neighborhood": PRC_NEIGHBORHOOD, "reference_kind": "images", "num_reference": num_reference}
