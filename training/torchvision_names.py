"""torchvision's names of the VGG configurations it ships weights for. No torch: the command
line builds its choices from this table without importing torch."""

from __future__ import annotations

from model_store import ConfigName

TORCHVISION_ARCHS: dict[str, ConfigName] = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
