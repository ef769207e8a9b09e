"""Domain metrics for `shapes` through torch-fidelity (benchmark/metrics/domain.py): the shapes
factor evaluator as a registered torch-fidelity feature extractor, and the factor distances."""
import numpy as np
import pytest
import torch
import torch_fidelity

from benchmark.datasets.shapes import Shapes
from benchmark.metrics import factors as fac
from benchmark.metrics import domain
from benchmark.metrics.fidelity import UInt8Images
from benchmark.generation import to_uint8


@pytest.fixture(scope="module")
def weights():
    """The shipped evaluator weights."""
    return fac.evaluator_weights("easy", "/nonexistent-cache")


@pytest.fixture(scope="module")
def images():
    """256 real renders (more than the 128 feature dimensions, so the covariances are full rank)."""
    x, labels = Shapes(resolution=32, num_classes=4, size=512, seed=0, split="test").render(np.arange(256))
    return to_uint8(x), labels


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_extractor_is_registered_and_reads_the_evaluator_file(weights, images):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    assert FEATURE_EXTRACTORS_REGISTRY[domain.FEATURE_EXTRACTOR] is domain.ShapesFactorExtractor
    feats = domain.extract_features(images[0][:8], weights, batch_size=3)
    pred = fac.predict(fac.load(weights), images[0][:8].float() / 127.5 - 1)
    assert feats[domain.FEATURES].dtype == torch.float64 and feats[domain.FEATURES].shape == (8, 128)
    assert torch.allclose(feats[domain.FEATURES].float(), pred["features"], atol=1e-5)
    assert torch.allclose(feats[domain.LOGITS].float(), pred["logits"], atol=1e-5)
    read = domain.factors_of(feats)
    assert np.array_equal(read["label"], pred["label"].numpy())
    assert np.allclose(read["hue"], pred["hue"].numpy(), atol=1e-4) and np.allclose(read["size"], pred["size"].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="feature_extractor_weights_path"):
        domain.ShapesFactorExtractor(domain.FEATURE_EXTRACTOR, [domain.FEATURES])
    with pytest.raises(ValueError, match="uint8"):
        domain.ShapesFactorExtractor(domain.FEATURE_EXTRACTOR, [domain.FEATURES],
                                      feature_extractor_weights_path=str(weights))(images[0][:2].float())


def test_fd_is_zero_on_itself_and_grows_with_noise(weights, images):
    x, labels = images
    reference = domain.extract_features(x, weights)
    same = domain.domain_metrics(reference, reference, labels)
    assert abs(same[domain.KEY_FD]) < 1e-6
    assert same[domain.KEY_PRECISION] == 1.0 and same[domain.KEY_RECALL] == 1.0
    assert 1.0 <= same[domain.KEY_IS] <= 4.0   # exp(E KL) is at most the number of classes
    predicted = fac.predict(fac.load(weights), x.float() / 127.5 - 1)["label"]
    assert same[domain.KEY_CLASS_CONSISTENCY] == pytest.approx((predicted == labels).float().mean().item())
    assert same["factor_hue_w1"] == 0 and same["factor_class_tv"] == 0 and same["factor_hue_coverage"] == 1
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


def test_factor_distances_on_known_distributions():
    rng = np.random.default_rng(0)
    assert domain.circular_w1(np.full(100, 0.95), np.full(100, 0.05)) == pytest.approx(0.1, abs=2e-3)   # wraps
    assert domain.circular_w1(np.full(100, 0.1), np.full(100, 0.6)) == pytest.approx(0.5, abs=2e-3)
    u = rng.random(20000)
    assert domain.circular_w1(u, np.mod(u + 0.3, 1)) < 0.01           # a rotated uniform is still uniform
    two_hues = np.where(rng.random(20000) < 0.5, 0.1, 0.6)
    assert domain.circular_w1(two_hues, u) == pytest.approx(0.125, abs=0.01)   # each half travels 1/8 on average
    a = rng.normal(size=20000)
    assert domain.w1(a, a + 0.5) == pytest.approx(0.5, abs=1e-6)
    assert domain.total_variation(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), 4) == pytest.approx(0.5)
    real = rng.integers(0, 12, 5000)
    assert domain.coverage(real, real, 12) == 1.0
    assert domain.coverage(np.full(100, 3), real, 12) == pytest.approx(1 / 12)


def test_hue_spread_sees_a_shape_painted_in_two_colours():
    """Renders paint a shape in one colour: their within-shape hue spread is about 0, whatever
    the (dull) background. Half of each shape a third of the hue circle away (the validation's
    "two-toned shapes") spreads it by about 1/6 turn; noise by far less."""
    from benchmark.metrics import validation
    data = Shapes(resolution=32, num_classes=8, variant="easy", size=64, split="test")
    real, _ = data.render(np.arange(64))
    sets = validation.broken_sets(data, 64)
    assert domain.hue_spread(real).max() < 0.01
    assert domain.hue_spread(sets["two hues"][0]).max() < 0.01              # one colour each, other hues
    assert domain.hue_spread(sets["two-toned shapes"][0]).median() > 0.15
    assert 0.005 < domain.hue_spread(sets["noisy"][0]).median() < 0.05
