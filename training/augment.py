"""The paper's training augmentation (VGG §3.1, AlexNet §4.1) and the test-time rescale.

Training, per image: isotropic rescale so the smallest side is S (fixed, or sampled uniformly from
the integers in [S_min, S_max] for each image: scale jittering), a random 224x224 crop, a random
horizontal flip, then, on the float image in 0..255 units, the PCA colour shift and the
subtraction of the training-set mean RGB. The geometric steps are torchvision ``transforms.v2``
on the PIL image (bilinear, antialiased, like the service's rescale); the random draws come from
torch's global generator, which ``training.data`` seeds per sample.

PCA colour shift (AlexNet §4.1): with ``P_i``, ``lambda_i`` the eigenvectors and eigenvalues of the
3x3 covariance of RGB pixel values, each image gets ``[P1 P2 P3] [a1 l1, a2 l2, a3 l3]^T`` added
to every pixel, ``a_i ~ N(0, 0.1)`` drawn once per image. As in the widely used ImageNet
"lighting" constants (eigenvalue 0.2175 for the first component), the eigenvalues are those of
pixels in [0, 1]; the shift is then multiplied by 255 to apply it in 0..255 units (eigenvalues
of 0..255 pixels would give shifts of hundreds of grey levels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from model_store.scales import CROP_SIZE

PIXEL_RANGE = 255.0
COLOR_SHIFT_STD = 0.1


class RandomIsotropicRescale(torch.nn.Module):
    """Rescale so that the smallest side is S; S fixed or sampled per image from [s_min, s_max]."""

    def __init__(self, s_min: int, s_max: int | None = None) -> None:
        super().__init__()
        s_max = s_min if s_max is None else s_max
        if s_min < CROP_SIZE or s_max < s_min:
            raise ValueError(f"need {CROP_SIZE} <= S_min <= S_max, got [{s_min}, {s_max}]")
        self.s_min, self.s_max = int(s_min), int(s_max)

    def sample_scale(self) -> int:
        if self.s_min == self.s_max:
            return self.s_min
        return int(torch.randint(self.s_min, self.s_max + 1, ()).item())

    def forward(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        return rescale(image, self.sample_scale())

    def extra_repr(self) -> str:
        return f"s_min={self.s_min}, s_max={self.s_max}"


def rescale(image: Image.Image | torch.Tensor, smallest_side: int) -> Image.Image | torch.Tensor:
    """Isotropic bilinear, antialiased rescale so that the smallest side is ``smallest_side``."""
    return F.resize(
        image, [smallest_side], interpolation=v2.InterpolationMode.BILINEAR, antialias=True
    )


class PCAColorShift(torch.nn.Module):
    """Add ``eigvec @ (alpha * eigval) * 255`` to every pixel; ``alpha ~ N(0, std)`` per image.

    ``eigval`` (3,) and ``eigvec`` (3, 3, eigenvectors in columns) describe the covariance of RGB
    pixels in [0, 1]; the input is a float (3, H, W) or (N, 3, H, W) image in 0..255 units.
    """

    def __init__(
        self,
        eigval: Sequence[float] | torch.Tensor,
        eigvec: Sequence[Sequence[float]] | torch.Tensor,
        std: float = COLOR_SHIFT_STD,
    ) -> None:
        super().__init__()
        self.register_buffer("eigval", torch.as_tensor(eigval, dtype=torch.float32).reshape(3))
        self.register_buffer("eigvec", torch.as_tensor(eigvec, dtype=torch.float32).reshape(3, 3))
        self.std = float(std)

    def shift(self, alpha: torch.Tensor) -> torch.Tensor:
        """The RGB shift (3,) in 0..255 units for coefficients ``alpha`` (3,)."""
        return self.eigvec @ (alpha * self.eigval) * PIXEL_RANGE

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        return image + self.shift(alpha).to(image.dtype).reshape(3, 1, 1)


def to_float_pixels() -> v2.Compose:
    """PIL image to a float32 (3, H, W) tensor in 0..255 (the paper's units; scale 1)."""
    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=False)])


def train_transform(
    s_min: int,
    s_max: int,
    mean: Sequence[float],
    eigval: Sequence[float] | torch.Tensor | None = None,
    eigvec: Sequence[Sequence[float]] | torch.Tensor | None = None,
    *,
    std: Sequence[float] = (1.0, 1.0, 1.0),
    color_shift_std: float = COLOR_SHIFT_STD,
    crop_size: int = CROP_SIZE,
    flip: bool = True,
) -> v2.Compose:
    """Rescale to S (fixed or jittered), random crop, random flip, PCA colour shift, minus mean."""
    steps: list[torch.nn.Module] = [
        RandomIsotropicRescale(s_min, s_max),
        v2.RandomCrop(crop_size),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(to_float_pixels())
    if eigval is not None and eigvec is not None and color_shift_std > 0:
        steps.append(PCAColorShift(eigval, eigvec, color_shift_std))
    steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


def eval_transform(
    scale: int, mean: Sequence[float], std: Sequence[float] = (1.0, 1.0, 1.0)
) -> v2.Compose:
    """Test protocol step 1 (docs/training.md): smallest side Q, float pixels,
    ``(pixel - mean) / std``."""
    return v2.Compose(
        [
            RandomIsotropicRescale(scale, scale),
            to_float_pixels(),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
