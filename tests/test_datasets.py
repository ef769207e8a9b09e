import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.datasets.imagefolder import ImageFolder, center_crop_arr
from benchmark.datasets.shapes import CLASS_NAMES, Shapes


def test_same_index_same_image_whatever_the_batch():
    d = Shapes(resolution=32)
    batch, labels = d.render(np.arange(10))
    single, label = d[7]
    assert torch.equal(batch[7], single) and labels[7] == label
    again, _ = Shapes(resolution=32).render([3, 7])
    assert torch.equal(again[1], batch[7])


def test_images_in_range_and_classes_balanced():
    d = Shapes(resolution=32, num_classes=8)
    x, y = d.render(np.arange(800))
    assert x.shape == (800, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.bincount(y).tolist() == [100] * 8


def test_resolution_independent_scene():
    """The same scene at 128 px, area-averaged to 32 px, matches the 32 px render: the
    coverage is analytic, so only the sampling grid changes."""
    d = Shapes(resolution=32)
    small, y_small = d.render(np.arange(16), resolution=32)
    large, y_large = d.render(np.arange(16), resolution=128)
    assert torch.equal(y_small, y_large)
    down = F.interpolate(large, size=32, mode="area")
    assert (down - small).abs().mean() < 0.01
    # Only edge pixels differ (box filter vs. analytic coverage, most at sharp star tips).
    assert torch.quantile((down - small).abs().flatten(), 0.99) < 0.15


def test_splits_and_seeds_differ():
    a = Shapes(split="train").render([0])[0]
    assert not torch.equal(a, Shapes(split="test").render([0])[0])
    assert not torch.equal(a, Shapes(seed=1).render([0])[0])


def test_classes_differ_only_by_shape():
    """Colour statistics must not give the class away: the per-class mean colour of the
    shape pixels is close to the overall mean."""
    d = Shapes(resolution=32)
    x, y = d.render(np.arange(1600))
    means = torch.stack([x[y == c].mean(dim=(0, 2, 3)) for c in range(8)])
    assert (means - means.mean(0)).abs().max() < 0.1


def test_hard_variant_and_bad_arguments():
    assert Shapes(variant="hard").render([0])[0].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="variant"):
        Shapes(variant="medium")
    with pytest.raises(ValueError, match="num_classes"):
        Shapes(num_classes=len(CLASS_NAMES) + 1)


def test_imagefolder_center_crop(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.random.randint(0, 255, (70, 100, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = ImageFolder(str(tmp_path), resolution=32)
    x, y = d.render([0, 3])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1] and d.num_classes == 2
    assert center_crop_arr(Image.new("RGB", (300, 200)), 64).size == (64, 64)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root"):
        ImageFolder(str(tmp_path / "nope"))


def test_imagefolder_reads_every_mode_as_8_bit_rgb(tmp_path):
    """16-bit greyscale is scaled (not clipped at 255), greyscale / palette / RGBA become RGB,
    and the preflight check counts the modes it will convert."""
    import numpy as np
    from PIL import Image

    from benchmark.datasets.imagefolder import ImageFolder, check_files, read_rgb
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    ramp = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257)        # 0 .. 65535 in steps of 257
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "a" / "deep.png")
    Image.fromarray(np.full((16, 16), 128, np.uint8), mode="L").save(tmp_path / "a" / "grey.png")
    Image.fromarray(np.full((16, 16, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "b" / "alpha.png")
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(tmp_path / "b" / "rgb.png")
    deep = np.asarray(read_rgb(str(tmp_path / "a" / "deep.png")))
    assert deep.shape == (16, 16, 3) and deep[..., 0].ravel().tolist() == list(range(256))   # scaled, not clipped
    assert np.asarray(read_rgb(str(tmp_path / "a" / "grey.png"))).max() == 128
    assert np.asarray(read_rgb(str(tmp_path / "b" / "alpha.png")))[0, 0].tolist() == [200, 200, 200]
    modes = check_files(ImageFolder(str(tmp_path), resolution=16))
    assert sum(modes.values()) == 4 and modes["RGB"] == 1 and modes["L"] == 1 and modes["RGBA"] == 1
