"""Paper §3.2: the FC layers as convolutions, so the net runs densely over a whole image.

fc6 becomes a 7x7 conv with no padding, fc7 and fc8 1x1 convs. For an H x W input (both >= 224)
the output is a class score map of ``(N, K, H // 32 - 6, W // 32 - 6)``; at 224 x 224 it is the FC
net's logits. Unlike torchvision's AdaptiveAvgPool2d head, this is exact at every input size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.vgg import FC6_KERNEL, VGG

# The head's layers: fc6 conv, ReLU, dropout, fc7 conv, ReLU, dropout, fc8 conv. Index 4 is fc7's
# ReLU, whose output is the ``features`` of the export (docs/training.md, "The features output").
FC7_CONV = 3
FC7_RELU = 4


class FullyConvVGG(nn.Module):
    """Input ``image (N, 3, H, W)``, output ``scores (N, K, H // 32 - 6, W // 32 - 6)``;
    :meth:`scores_and_features` also gives fc7's activations ``(N, F, h, w)``."""

    def __init__(self, config: str, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.config = config
        self.features = features
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head[6].out_channels

    @property
    def feature_dim(self) -> int:
        """F, fc7's width (4096 at full size)."""
        return self.head[FC7_CONV].out_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))

    def scores_and_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, features)``: :meth:`forward` itself, with the output of fc7's ReLU
        (dropout is the identity in eval mode) caught on its way to fc8 by a forward hook, so
        that an ONNX trace of it holds the very ops and names of the scores-only graph."""
        caught: list[torch.Tensor] = []
        hook = self.head[FC7_RELU].register_forward_hook(lambda _m, _i, out: caught.append(out))
        try:
            scores = self(image)
        finally:
            hook.remove()
        return scores, caught[0]


def _linear_as_conv(linear: nn.Linear, in_channels: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, linear.out_features, kernel, padding=0)
    with torch.no_grad():
        # torch.flatten of (C, 7, 7) maps is C-major, so a plain reshape keeps every weight.
        conv.weight.copy_(linear.weight.reshape(linear.out_features, in_channels, kernel, kernel))
        conv.bias.copy_(linear.bias)
    return conv


def to_fully_convolutional(model: VGG) -> FullyConvVGG:
    """A fully-convolutional copy of ``model`` (same weights, independent parameters)."""
    fc6, fc7, fc8 = model.classifier[0], model.classifier[3], model.classifier[6]
    channels = fc6.in_features // (FC6_KERNEL * FC6_KERNEL)
    head = nn.Sequential(
        _linear_as_conv(fc6, channels, FC6_KERNEL),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        _linear_as_conv(fc7, fc7.in_features, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        _linear_as_conv(fc8, fc8.in_features, 1),
    )
    features = copy.deepcopy(model.features)
    fcn = FullyConvVGG(model.config, features, head)
    fcn.train(model.training)
    return fcn


def score_map_shape(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the class score map for an ``height x width`` input (both >= 224)."""
    return height // 32 - 6, width // 32 - 6
