"""Domain metrics for `shapes` through torch-fidelity (benchmark/metrics/domain.py): the shapes
classifier as a registered torch-fidelity feature extractor."""
import numpy as np
import pytest
import torch
import torch_fidelity
from safetensors.torch import save_file

from benchmark.datasets.shapes import Shapes
from benchmark.metrics import classifier as C
from benchmark.metrics import domain
from benchmark.metrics.fidelity import UInt8Images
from benchmark.generation import to_uint8


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A classifier weights file (random init, seeded: the metric path does not need a trained one)."""
    torch.manual_seed(0)
    model = C.ShapeClassifier(num_classes=4)
    path = tmp_path_factory.mktemp("clf") / "shapes_classifier_test.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def images():
    """256 real renders (more than the 128 feature dimensions, so the covariances are full rank)."""
    x, labels = Shapes(resolution=32, num_classes=4, size=512, seed=0, split="test").render(np.arange(256))
    return to_uint8(x), labels


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_extractor_is_registered_and_reads_the_classifier_file(weights, images):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    assert FEATURE_EXTRACTORS_REGISTRY[domain.FEATURE_EXTRACTOR] is domain.ShapesFeatureExtractor
    feats = domain.extract_features(images[0][:8], weights, batch_size=3)
    model = C.load_classifier(weights)
    logits, penultimate = C.predict(model, images[0][:8].float() / 127.5 - 1)
    assert feats[domain.FEATURES].dtype == torch.float64 and feats[domain.FEATURES].shape == (8, 128)
    assert torch.allclose(feats[domain.FEATURES].float(), penultimate, atol=1e-6)
    assert torch.allclose(feats[domain.LOGITS].float(), logits, atol=1e-6)
    with pytest.raises(ValueError, match="feature_extractor_weights_path"):
        domain.ShapesFeatureExtractor(domain.FEATURE_EXTRACTOR, [domain.FEATURES])
    with pytest.raises(ValueError, match="uint8"):
        domain.ShapesFeatureExtractor(domain.FEATURE_EXTRACTOR, [domain.FEATURES],
                                      feature_extractor_weights_path=str(weights))(images[0][:2].float())


def test_fd_is_zero_on_itself_and_grows_with_noise(weights, images):
    x, labels = images
    reference = domain.extract_features(x, weights)
    same = domain.domain_metrics(reference, reference, labels)
    assert abs(same[domain.KEY_FD]) < 1e-6
    assert same[domain.KEY_PRECISION] == 1.0 and same[domain.KEY_RECALL] == 1.0
    assert 1.0 <= same[domain.KEY_IS] <= 4.0   # exp(E KL) is at most the number of classes
    predicted = C.predict(C.load_classifier(weights), x.float() / 127.5 - 1)[0].argmax(1)
    assert same[domain.KEY_CLASS_CONSISTENCY] == pytest.approx((predicted == labels).float().mean().item())
    worse = [domain.domain_metrics(domain.extract_features(noisy(x, s), weights), reference) for s in (8, 30, 90)]
    fds = [m[domain.KEY_FD] for m in worse]
    assert 1e-4 < fds[0] < fds[1] < fds[2]
    # KID is an unbiased estimate over random subsets: about 0 on itself, not exactly 0.
    assert abs(same[domain.KEY_KID]) < worse[1][domain.KEY_KID] < worse[2][domain.KEY_KID]
    assert worse[2][domain.KEY_PRECISION] < 1.0


def test_same_numbers_as_torch_fidelity_calculate_metrics(weights, images):
    """The per-row path (features once, then torch-fidelity's metric functions) gives what
    torch-fidelity's one-call API gives with the registered extractor."""
    x = images[0]
    y = noisy(x, 40)
    ours = domain.domain_metrics(domain.extract_features(y, weights), domain.extract_features(x, weights),
                                 kid_subset_size=200)
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(y), input2=UInt8Images(x), feature_extractor=domain.FEATURE_EXTRACTOR,
        feature_extractor_weights_path=str(weights), isc=True, fid=True, kid=True, prc=True, kid_subset_size=200,
        cuda=False, verbose=False, save_cpu_ram=True, batch_size=64)
    assert ours[domain.KEY_FD] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)
    assert ours[domain.KEY_KID] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-9)
    assert ours[domain.KEY_PRECISION] == theirs["precision"] and ours[domain.KEY_RECALL] == theirs["recall"]
    assert ours[domain.KEY_IS] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
