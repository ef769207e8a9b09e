"""torch-fidelity metrics, offline: the weights lookup, ADM reference batches, the Fréchet
arithmetic, and the whole path with an Inception-v3 of random weights made by the test."""
import numpy as np
import pytest
import torch
from scipy import linalg

from benchmark.metrics import fidelity


def test_frechet_distance_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + np.eye(d), b @ b.T / 3 + 0.5 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    got = fidelity.frechet_distance({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2})
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert fidelity.frechet_distance({"mu": m1, "sigma": s1}, {"mu": m1, "sigma": s1}) == pytest.approx(0, abs=1e-6)


def test_adm_reference_npz_round_trip(tmp_path):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    mu, sigma = np.arange(4.0), np.eye(4)
    path = fidelity.write_reference(tmp_path / "ref.npz", images, mu, sigma)
    with np.load(path) as npz:   # the ADM layout: N x H x W x 3
        assert npz["arr_0"].shape == (5, 8, 8, 3) and npz["arr_0"].dtype == np.uint8
    ref = fidelity.read_reference(path)
    assert torch.equal(ref["images"], images) and np.array_equal(ref["mu"], mu) and np.array_equal(ref["sigma"], sigma)
    np.savez(tmp_path / "bad.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="neither arr_0"):
        fidelity.read_reference(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet256"):
        fidelity.read_reference(tmp_path / "missing.npz")


def test_missing_weights_fail_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv(fidelity.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(fidelity.MissingWeightsError, match=r"weights-inception-2015-12-05-6726825d\.pth.*prefetch"):
        fidelity.inception_weights(download=False)
    with pytest.raises(fidelity.MissingWeightsError, match="do not exist"):
        fidelity.inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(fidelity.ENV_WEIGHTS, str(tmp_path / "also-nope.pth"))
    with pytest.raises(fidelity.MissingWeightsError, match=r"SCALEWISE_INCEPTION_WEIGHTS"):
        fidelity.inception_weights()
    torch.save({"fc.weight": torch.zeros(10, 10)}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="not torch-fidelity's Inception"):
        fidelity.inception_weights(tmp_path / "other.pth")


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    return random_inception_file(tmp_path_factory.mktemp("inception"))


def random_inception_file(folder):
    """An Inception-v3 weights file of the right architecture with random weights."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
    torch.manual_seed(0)
    model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    for m in model.modules():   # He init: PyTorch's default shrinks activations ~3x a layer, to 0 at the pool
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / fidelity.INCEPTION_FILE
    torch.save(model.state_dict(), path)
    return path


def test_full_path_fid_is_zero_on_itself_and_grows_with_noise(random_inception):
    from benchmark.datasets.shapes import Shapes
    from benchmark.generation import to_uint8
    weights = fidelity.inception_weights(random_inception)
    images = to_uint8(Shapes(resolution=32, num_classes=4, size=64, seed=0, split="test").render(torch.arange(16))[0])
    reference = {"images": images}
    same = fidelity.fidelity_metrics(images, reference, weights, isc=True, kid=True, prc=True, batch_size=16)
    assert abs(same["frechet_inception_distance"]) < 1e-3
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0)
    assert {"inception_score_mean", "kernel_inception_distance_mean"} <= set(same)
    g = torch.Generator().manual_seed(0)
    fids = []
    for sigma in (10, 60):
        noisy = (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
        fids.append(fidelity.fidelity_metrics(noisy, reference, weights, isc=False, kid=False, prc=False,
                                              batch_size=16)["frechet_inception_distance"])
    assert 1e-3 < fids[0] < fids[1]
    # Against precomputed statistics only: the same FID through torch-fidelity's own Fréchet code.
    stats = fidelity.inception_statistics(images, weights, batch_size=16)
    noisy_fid = fidelity.fidelity_metrics(noisy, stats, weights, isc=False, kid=False, prc=False,
                                          batch_size=16)["frechet_inception_distance"]
    assert noisy_fid == pytest.approx(fids[1], rel=1e-4)
    with pytest.raises(ValueError, match="need the reference images"):
        fidelity.fidelity_metrics(images, stats, weights, kid=True)


def test_prefetch_command_offline_and_with_a_file(tmp_path, monkeypatch, capsys, random_inception):
    from benchmark.cli import main
    monkeypatch.delenv(fidelity.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert main(["prefetch"]) == 2
    assert "download failed" in capsys.readouterr().err
    assert main(["prefetch", "--inception-weights", str(random_inception)]) == 0
    assert "sha256:" in capsys.readouterr().out


def test_evaluate_command_scores_a_sample_folder_and_writes_a_record(tmp_path, random_inception, capsys):
    import json
    from PIL import Image
    from benchmark.cli import main
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    (tmp_path / "samples" / "images").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / "samples" / "images" / f"{i:06d}.png")
    (tmp_path / "samples" / "manifest.json").write_text(json.dumps({"method": "var", "seed": 0, "sampler": {"cfg": 1.5}}))
    fidelity.write_reference(tmp_path / "ref.npz", images)
    assert main(["evaluate", "--samples", str(tmp_path / "samples"), "--reference", str(tmp_path / "ref.npz"),
                 "--inception-weights", str(random_inception), "--metrics", "fid", "prc", "--results",
                 str(tmp_path / "results"), "--batch-size", "12"]) == 0
    record = json.loads(next((tmp_path / "results" / "records").glob("fidelity_var_*.json")).read_text())
    assert abs(record["metrics"]["frechet_inception_distance"]) < 1e-3 and record["metrics"]["precision"] == 1.0
    assert record["protocol"]["num_samples"] == 12 and len(record["protocol"]["inception_sha256"]) == 64
    assert (tmp_path / "results" / "leaderboard.csv").exists()
    assert main(["evaluate", "--samples", str(tmp_path / "samples"), "--reference", str(tmp_path / "ref.npz"),
                 "--inception-weights", str(tmp_path / "missing.pth")]) == 2
    assert "do not exist" in capsys.readouterr().err


def test_adm_batch_fid_from_its_statistics_precision_recall_from_its_images(random_inception, tmp_path):
    """The ADM batch holds two references: mu/sigma of the training set (FID) and 10k images
    (precision/recall, KID). With both, FID must come from the statistics."""
    from benchmark.datasets.shapes import Shapes
    from benchmark.generation import to_uint8
    weights = fidelity.inception_weights(random_inception)
    images = to_uint8(Shapes(resolution=32, num_classes=4, size=64, seed=0, split="test").render(torch.arange(16))[0])
    other = to_uint8(Shapes(resolution=32, num_classes=4, size=64, seed=1, split="test").render(torch.arange(16))[0])
    other_stats = fidelity.inception_statistics(other, weights, batch_size=16)
    both = fidelity.fidelity_metrics(images, {"images": images, **other_stats}, weights, isc=False, kid=False,
                                     prc=True, batch_size=16)
    stats_only = fidelity.fidelity_metrics(images, other_stats, weights, isc=False, kid=False, prc=False, batch_size=16)
    assert both["frechet_inception_distance"] == pytest.approx(stats_only["frechet_inception_distance"], rel=1e-6)
    assert both["frechet_inception_distance"] > 1e-3            # against its own images it would be 0
    assert both["precision"] == pytest.approx(1.0)              # precision/recall: against the images
    fidelity.write_reference(tmp_path / "ref16.npz", images[:, :, :16, :16])
    fidelity.write_reference(tmp_path / "samples.npz", images)
    with pytest.raises(ValueError, match=r"samples are \(32, 32\) px but the reference images are \(16, 16\) px"):
        fidelity.evaluate_folder(tmp_path / "samples.npz", tmp_path / "ref16.npz", weights, tmp_path / "results")
