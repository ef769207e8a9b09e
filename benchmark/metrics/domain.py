"""Domain metrics for `shapes` through torch-fidelity: the suite's shapes classifier
(benchmark/metrics/classifier.py) registered as a torch-fidelity feature extractor, so the
domain FD, KID, precision/recall and an IS-like score come out of torch-fidelity's own metric
code, exactly as its Inception metrics do; only the feature space differs.

The extractor ``shapes-classifier`` provides two features:

* ``shapes-features`` — the classifier's penultimate features (128), for FD, KID and
  precision/recall (torch-fidelity's ``fid`` / ``kid`` / ``prc``);
* ``shapes-logits`` — its class logits, for the IS-like score (torch-fidelity's ``isc``:
  exp(E KL(p(y|x) || p(y))), at most the number of classes).

Like every torch-fidelity extractor it takes uint8 images (B, 3, H, W); the weights file is
given as ``feature_extractor_weights_path`` (a cached ``shapes_classifier_*.safetensors``).
Values are in this classifier's feature space: not comparable with Inception FID / IS.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from benchmark.metrics import classifier as clf
from benchmark.metrics.fidelity import UInt8Images, frechet_distance

FEATURE_EXTRACTOR = "shapes-classifier"
FEATURES = "shapes-features"
LOGITS = "shapes-logits"

KEY_CLASS_CONSISTENCY = clf.KEY_CLASS_CONSISTENCY   # share of samples classified as their conditioning class
KEY_FD = clf.KEY_CLASSIFIER_FD                      # Fréchet distance of the penultimate features
KEY_KID = "classifier_kid"                          # kernel distance (torch-fidelity's KID, mean over subsets)
KEY_PRECISION = "classifier_precision"
KEY_RECALL = "classifier_recall"
KEY_IS = "classifier_is"                            # torch-fidelity's ISC over the logits (mean over splits)

# torch-fidelity's defaults, fixed here so that the record can name them.
ISC_SPLITS, KID_SUBSETS, KID_SUBSET_SIZE, PRC_NEIGHBORHOOD = 10, 100, 1000, 3


class ShapesFeatureExtractor(FeatureExtractorBase):
    """The shapes classifier as a torch-fidelity feature extractor (uint8 in, float64 out:
    torch-fidelity fits its FID Gaussians in the extractor's dtype, and float32 statistics
    are one of the known FID pitfalls)."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs):
        super().__init__(name, features_list)
        if not feature_extractor_weights_path:
            raise ValueError(f"the {FEATURE_EXTRACTOR} feature extractor needs feature_extractor_weights_path=<a cached "
                             "shapes_classifier_*.safetensors> (the evaluate stage trains one into cache/classifiers)")
        self.classifier = clf.load_classifier(Path(feature_extractor_weights_path))

    @staticmethod
    def get_provided_features_list() -> tuple[str, str]:
        return FEATURES, LOGITS

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
        features = self.classifier.features(x.float() / 127.5 - 1)         # (B, D): the inverse of stages.to_uint8
        out = {FEATURES: features.double(), LOGITS: self.classifier.head(features).double()}
        return tuple(out[name] for name in self.features_list)


if FEATURE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:   # torch-fidelity rejects a second registration
    register_feature_extractor(FEATURE_EXTRACTOR, ShapesFeatureExtractor)


def extract_features(images: torch.Tensor, weights: str | Path, batch_size: int = 256,
                     device: str = "cpu") -> dict[str, torch.Tensor]:
    """{feature name: (N, D)} of uint8 images (N, 3, H, W), by torch-fidelity's extractor loop."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
    cuda = device == "cuda"
    extractor = create_feature_extractor(FEATURE_EXTRACTOR, [FEATURES, LOGITS], cuda=cuda,
                                         feature_extractor_weights_path=str(weights), verbose=False)
    return get_featuresdict_from_dataset(UInt8Images(images), extractor, batch_size, cuda, True, False)


def domain_metrics(samples: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                   labels: torch.Tensor | None = None, kid_subset_size: int = KID_SUBSET_SIZE) -> dict[str, float]:
    """FD, KID, precision/recall and the IS-like score of sample features against reference
    features (``extract_features``' dicts), each by torch-fidelity's own function (what
    ``torch_fidelity.calculate_metrics`` runs after extracting features); with ``labels``, the
    class consistency too. The reference features are extracted once and reused for every row.
    KID subsets shrink to the smaller set when it has fewer than ``kid_subset_size`` images."""
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
    if labels is not None:
        predicted = samples[LOGITS].argmax(1)
        out[KEY_CLASS_CONSISTENCY] = (predicted == labels.to(predicted.device)).double().mean().item()
    return {k: float(v) for k, v in out.items()}


def protocol(weights: Path, num_samples: int, num_reference: int) -> dict:
    """How the domain metrics were computed, for the record."""
    import hashlib

    import torch_fidelity
    return {"evaluator": f"torch-fidelity {torch_fidelity.__version__}, feature extractor {FEATURE_EXTRACTOR}",
            "classifier": Path(weights).name, "classifier_sha256": hashlib.sha256(Path(weights).read_bytes()).hexdigest(),
            "features": f"{FEATURES} (FD, KID, precision/recall), {LOGITS} (IS-like score), float64",
            "isc_splits": ISC_SPLITS, "kid_subsets": KID_SUBSETS,
            "kid_subset_size": min(KID_SUBSET_SIZE, num_samples, num_reference),
            "prc_neighborhood": PRC_NEIGHBORHOOD, "reference_kind": "images", "num_reference": num_reference}
