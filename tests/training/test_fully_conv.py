"""Paper §3.2: the fully-convolutional net equals the FC net at 224 and scores densely elsewhere."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_vgg
from training.fully_conv import score_map_shape, to_fully_convolutional


@pytest.mark.parametrize("config", ["A", "A-LRN", "B", "C", "D", "E"])
def test_equals_fc_net_at_224(config: str) -> None:
    model = tiny_vgg(config)
    fcn = to_fully_convolutional(model).eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        scores = fcn(x)
    assert scores.shape == (3, 5, 1, 1)
    torch.testing.assert_close(scores[:, :, 0, 0], logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("height", "width"), [(224, 224), (256, 256), (224, 320), (300, 260), (511, 384), (640, 480)]
)
def test_score_map_shape(height: int, width: int) -> None:
    fcn = to_fully_convolutional(tiny_vgg("D")).eval()
    with torch.no_grad():
        scores = fcn(torch.zeros(2, 3, height, width))
    assert scores.shape == (2, 5, height // 32 - 6, width // 32 - 6)
    assert scores.shape[2:] == score_map_shape(height, width)


def test_dense_map_holds_the_crops_scores_at_aligned_offsets() -> None:
    """Each score-map cell is the FC net on a 224 window at a multiple of 32 (fc6's stride)."""
    model = tiny_vgg("A", seed=3)
    fcn = to_fully_convolutional(model).eval()
    x = torch.randn(1, 3, 288, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = fcn(x)
        # The conv stack of a window equals the dense one only away from zero padding, so
        # compare on the feature map: fc6 applied to features[..., i:i+7, j:j+7].
        features = fcn.features(x)
        crop = features[:, :, 2:9, 1:8]
        logits = model.classifier(torch.flatten(crop, 1))
    torch.testing.assert_close(scores[:, :, 2, 1], logits, rtol=1e-5, atol=1e-6)


def test_conversion_copies_weights_and_keeps_the_original() -> None:
    model = tiny_vgg("D")
    fcn = to_fully_convolutional(model)
    fc6 = model.classifier[0]
    assert torch.equal(fcn.head[0].weight.flatten(1), fc6.weight)
    fcn.head[0].weight.data.zero_()
    assert fc6.weight.abs().sum() > 0
