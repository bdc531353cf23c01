"""The VGG ConvNet configurations of Table 1 (Simonyan & Zisserman, ICLR 2015).

Each configuration is a short list: an int is a 3x3 conv of that width (padding 1), ``(1, c)`` a
1x1 conv (padding 0, config C), ``"M"`` a 2x2 max-pool with stride 2, ``"LRN"`` AlexNet's local
response normalisation (config A-LRN). Module indices of A, B, D and E match torchvision's
``vgg11/13/16/19``, so their state dicts load unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model_store import ConfigName
from model_store.scales import CROP_SIZE

LayerSpec = int | tuple[int, int] | str

LAYERS: dict[ConfigName, list[LayerSpec]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M",
          512, 512, (1, 512), "M", 512, 512, (1, 512), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}  # fmt: skip

FEATURE_STRIDE = 32
FC6_KERNEL = CROP_SIZE // FEATURE_STRIDE  # 7: fc6 sees the 7x7 map of a 224 crop

InitScheme = Literal["normal", "glorot", "kaiming"]


def lrn() -> nn.LocalResponseNorm:
    """AlexNet §3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75."""
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def make_features(config: ConfigName, width: float = 1.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for spec in LAYERS[config]:
        if spec == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif spec == "LRN":
            layers.append(lrn())
        else:
            kernel, channels = spec if isinstance(spec, tuple) else (3, spec)
            out_channels = scaled(channels, width)
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
    return nn.Sequential(*layers)


def feature_channels(features: nn.Sequential) -> int:
    return [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels


class VGG(nn.Module):
    """The network as trained: a conv stack and three FC layers on a 224x224 crop."""

    def __init__(
        self, config: ConfigName, features: nn.Sequential, num_classes: int, fc_width: int
    ) -> None:
        super().__init__()
        self.config = config
        self.features = features
        channels = feature_channels(features)
        self.classifier = nn.Sequential(
            nn.Linear(channels * FC6_KERNEL * FC6_KERNEL, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(fc_width, num_classes),
        )

    @property
    def num_classes(self) -> int:
        return self.classifier[6].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-2:] != (FC6_KERNEL, FC6_KERNEL):
            raise ValueError(
                f"the FC net takes {CROP_SIZE}x{CROP_SIZE} crops (a {FC6_KERNEL}x{FC6_KERNEL} "
                f"feature map), got a {tuple(x.shape[-2:])} map; use "
                "training.fully_conv.to_fully_convolutional for whole images"
            )
        return self.classifier(torch.flatten(x, 1))


def build_vgg(
    config: ConfigName,
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    fc_width: int = 4096,
    init: InitScheme | None = "normal",
) -> VGG:
    """Build configuration ``config`` ("A", "A-LRN", "B", "C", "D" or "E") of Table 1.

    ``width`` scales every conv width (reduced models for tests and demos); ``fc_width`` sets
    fc6/fc7. ``init`` is the paper's normal initialisation, Glorot's, He's, or None to leave
    PyTorch's defaults (for weights that are loaded next).
    """
    if config not in LAYERS:
        raise ValueError(f"unknown VGG config {config!r}; choose one of {', '.join(LAYERS)}")
    if width <= 0 or fc_width < 1 or num_classes < 1:
        raise ValueError("width, fc_width and num_classes must be positive")
    model = VGG(config, make_features(config, width), num_classes, fc_width)
    if init is not None:
        init_weights(model, init)
    return model


def init_weights(model: nn.Module, scheme: InitScheme = "normal", std: float = 0.1) -> None:
    """Paper §3.1: weights from N(0, 1e-2) (std 0.1), biases zero; or Glorot & Bengio (2010)
    uniform, which trains the deep configurations without pre-training; or He et al. (2015)
    normal with variance 2 / fan-in, which keeps the signal's scale through ReLU layers (Glorot's
    halves it at every layer, which stalls narrow deep nets such as the demo models)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if scheme == "normal":
                nn.init.normal_(m.weight, 0.0, std)
            elif scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.features if isinstance(m, nn.Conv2d)]
