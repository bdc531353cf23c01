"""Training sees the pixels the service is served: every pixel mode of the reliability corpus,
and an EXIF-rotated photo, decode to the same RGB bytes through the training data loader and
through the service's ``decode``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from model_store.imaging import decode, load_rgb
from service.settings import Settings
from tests.service.helpers import sample_image
from tests.service.reliability.corpus import Upload, modes
from training.data import image_folder, rgb_statistics

EXTENSIONS = {"PNG": ".png", "WEBP": ".webp", "TIFF": ".tiff", "GIF": ".gif", "BMP": ".bmp"}


def exif_rotated() -> Upload:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    sample_image(96, 64).save(out, "JPEG", exif=exif, quality=90)
    return Upload("exif-6-jpeg", out.getvalue(), "image/jpeg", frozenset({200}))


CASES = [*modes(), exif_rotated()]


def _extension(upload: Upload) -> str:
    fmt = Image.open(io.BytesIO(upload.data)).format or ""
    return EXTENSIONS.get(fmt, ".jpg")


@pytest.mark.parametrize("upload", CASES, ids=repr)
def test_training_and_serving_decode_to_the_same_pixels(upload: Upload, tmp_path: Path) -> None:
    path = tmp_path / "data" / "cls" / f"image{_extension(upload)}"
    path.parent.mkdir(parents=True)
    path.write_bytes(upload.data)
    if path.suffix in IMG_EXTENSIONS:
        trained_on, _ = image_folder(tmp_path / "data")[0]
    else:  # ImageFolder skips GIF files, as torchvision does; its loader is load_rgb
        trained_on = load_rgb(path)
    served = decode(upload.data, Settings().image_limits()).image
    assert trained_on.mode == served.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(trained_on), np.asarray(served))


def test_transparent_pixels_train_on_white_as_they_are_served(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    path = tmp_path / "data" / "cls" / "clear.png"
    path.parent.mkdir(parents=True)
    clear.save(path)
    trained_on, _ = image_folder(tmp_path / "data")[0]
    assert np.asarray(trained_on).min() == 255
    assert rgb_statistics([str(path)]).mean == pytest.approx((255.0, 255.0, 255.0))
