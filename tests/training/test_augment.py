"""The paper's augmentation: rescale to S, 224 crop, flip, PCA colour shift, mean subtraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.augment import (
    PIXEL_RANGE,
    PCAColorShift,
    RandomIsotropicRescale,
    eval_transform,
    train_transform,
)
from training.data import AugmentedDataset, rgb_statistics

MEAN = (120.0, 110.0, 100.0)


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(240, 240), (480, 250), (250, 470), (1000, 300)])
@pytest.mark.parametrize("scale", [(224, 224), (256, 256), (256, 512)])
def test_train_crops_are_224(size: tuple[int, int], scale: tuple[int, int]) -> None:
    transform = train_transform(*scale, MEAN)
    torch.manual_seed(0)
    for _ in range(3):
        x = transform(_random_image(*size))
        assert x.shape == (3, 224, 224)
        assert x.dtype == torch.float32


def test_rescale_is_isotropic_and_honours_the_range() -> None:
    rescale = RandomIsotropicRescale(256, 320)
    image = _random_image(400, 300)  # aspect 4:3
    torch.manual_seed(0)
    seen = set()
    for _ in range(300):
        s = rescale.sample_scale()
        assert 256 <= s <= 320
        seen.add(s)
    assert min(seen) == 256 and max(seen) == 320  # both ends are reachable
    assert len(seen) > 40  # uniform over the integers, not a few values
    for _ in range(10):
        out = rescale(image)
        w, h = out.size
        assert 256 <= h <= 320  # the smallest side is S
        assert abs(w / h - 4 / 3) < 0.01
    fixed = RandomIsotropicRescale(384)
    assert min(fixed(image).size) == 384
    assert min(fixed(image.transpose(Image.Transpose.TRANSPOSE)).size) == 384


def test_rescale_rejects_scales_below_the_crop() -> None:
    with pytest.raises(ValueError):
        RandomIsotropicRescale(200, 300)
    with pytest.raises(ValueError):
        RandomIsotropicRescale(300, 256)


def test_random_flip_happens_about_half_the_time() -> None:
    image = _random_image(224, 224)  # with S = 224 the crop is the whole image
    plain = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
    transform = train_transform(224, 224, (0.0, 0.0, 0.0), color_shift_std=0)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(200):
        x = transform(image)
        if torch.equal(x, plain.flip(-1)):
            flipped += 1
        else:
            assert torch.equal(x, plain)
    assert 70 < flipped < 130


def test_mean_subtraction() -> None:
    image = Image.new("RGB", (300, 260), tuple(int(m) for m in MEAN))
    x = train_transform(256, 256, MEAN, color_shift_std=0)(image)
    assert torch.allclose(x, torch.zeros_like(x))
    y = eval_transform(288, MEAN)(image)
    assert min(y.shape[1:]) == 288
    assert torch.allclose(y, torch.zeros_like(y))
    # The pixel units are 0..255 (scale 1), not 0..1.
    white = eval_transform(224, MEAN)(Image.new("RGB", (224, 224), (255, 255, 255)))
    assert torch.allclose(white[:, 0, 0], torch.tensor([135.0, 145.0, 155.0]))


def _random_rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q


def test_colour_shift_covariance_matches_alpha_times_eigenvalues() -> None:
    eigval = torch.tensor([0.2, 0.02, 0.005])
    eigvec = _random_rotation(1)
    shift = PCAColorShift(eigval, eigvec, std=0.1)
    torch.manual_seed(0)
    n = 20000
    zeros = torch.zeros(3, 2, 2)
    samples = torch.stack([shift(zeros)[:, 0, 0] for _ in range(n)]).double()
    # The same shift on every pixel of an image.
    out = shift(zeros)
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))
    # In the eigenvector basis the coefficients are alpha_i * lambda_i * 255, alpha ~ N(0, 0.1).
    coeffs = samples @ eigvec.double() / (eigval.double() * PIXEL_RANGE)
    assert coeffs.mean(0).abs().max() < 0.005
    assert torch.allclose(coeffs.std(0), torch.full((3,), 0.1, dtype=torch.double), rtol=0.03)
    expected = (
        eigvec.double() @ torch.diag((0.1 * eigval.double() * PIXEL_RANGE) ** 2) @ eigvec.double().T
    )
    empirical = torch.cov(samples.T)
    assert torch.allclose(empirical, expected, atol=0.03 * expected.abs().max())


def test_colour_shift_lies_in_the_pca_span(tmp_path) -> None:
    """Images whose colours vary along one axis only: every shift lies along that axis."""
    direction = np.array([0.8, 0.5, 0.2])
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        t = rng.uniform(0, 255, size=(32, 32, 1))
        pixels = np.clip(t * direction + 20, 0, 255).astype(np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    stats = rgb_statistics(paths)
    p1 = torch.tensor(stats.eigvec, dtype=torch.float64)[:, 0]
    assert abs(abs(float(p1 @ torch.tensor(direction / np.linalg.norm(direction)))) - 1) < 1e-3
    assert stats.eigval[1] < 1e-3 * stats.eigval[0]
    shift = PCAColorShift(stats.eigval, stats.eigvec, std=0.1)
    torch.manual_seed(1)
    for _ in range(50):
        s = shift(torch.zeros(3, 1, 1))[:, 0, 0].double()
        off_axis = s - (s @ p1) * p1
        assert off_axis.norm() < 1e-2 * max(s.norm(), 1e-3) + 1e-4
    # Statistics of the data: the mean in 0..255 units.
    means = np.concatenate([np.asarray(Image.open(p), float).reshape(-1, 3) for p in paths])
    assert np.allclose(stats.mean, means.mean(0), atol=0.5)


def test_colour_shift_off() -> None:
    x = torch.rand(3, 4, 4)
    assert torch.equal(PCAColorShift([1.0, 1.0, 1.0], torch.eye(3), std=0)(x), x)


def test_augmentation_is_seeded_per_sample() -> None:
    images = [(_random_image(300, 260, seed=i), 0) for i in range(3)]
    transform = train_transform(224, 320, MEAN, (0.05, 0.01, 0.001), torch.eye(3).tolist())
    ds = AugmentedDataset(images, transform, seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ds[1][0]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert torch.equal(a, ds[1][0])
    assert not torch.equal(a, ds[0][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1][0])
    ds.set_epoch(0)
    assert torch.equal(a, AugmentedDataset(images, transform, seed=7)[1][0])
    assert not torch.equal(a, AugmentedDataset(images, transform, seed=8)[1][0])
