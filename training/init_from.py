"""Paper §3.1: initialise a deeper configuration from a trained net A.

"we initialised the first four convolutional layers and the last three fully-connected layers
with the layers of net A (the intermediate layers were initialised randomly)". A's first four
convs are conv1_1, conv2_1, conv3_1 and conv3_2 (Table 1, named by block and position in the
block); they go to the layers of the same name in the deeper net, the only assignment under which
the shapes agree (A's second conv is 64 -> 128, like conv2_1 of B..E, not like their conv1_2).
fc6, fc7 and fc8 are copied whole. Everything else keeps the deeper net's own (normal, Glorot
or He) initialisation. Width, fc_width and the number of classes must be those of A.

``layers="all"`` goes further, as Net2Net's deepening does (Chen, Goodfellow & Shlens, ICLR 2016):
every conv of A goes to the layer of the same name, and the deeper net's extra convs start as the
identity (a Dirac kernel, zero bias). Their inputs come out of a ReLU and are never negative, so
the deeper net computes exactly A's function at its first step, and training starts where A ended
instead of from the random intermediate layers that stall narrow nets.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from training.errors import UserFacingError
from training.vgg import VGG, make_features

A_CONFIGS = ("A", "A-LRN")
A_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2")
LayerChoice = Literal["paper", "all"]
LAYER_CHOICES: tuple[LayerChoice, ...] = ("paper", "all")
FC_LAYERS = {"fc6": 0, "fc7": 3, "fc8": 6}


class InitError(UserFacingError):
    pass


def conv_names(features: nn.Sequential) -> dict[str, int]:
    """``{"conv1_1": module index in features, ...}``: block = pools passed + 1."""
    names: dict[str, int] = {}
    block, position = 1, 0
    for i, module in enumerate(features):
        if isinstance(module, nn.MaxPool2d):
            block, position = block + 1, 0
        elif isinstance(module, nn.Conv2d):
            position += 1
            names[f"conv{block}_{position}"] = i
    return names


def conv_names_for_config(config: str) -> dict[str, int]:
    return conv_names(make_features(config, width=1 / 64))


def a_layer_map(target: VGG, a_config: str = "A", layers: LayerChoice = "paper") -> dict[str, str]:
    """Parameter prefix in A -> parameter prefix in ``target``, for the layers copied from A."""
    a_names = conv_names_for_config(a_config)
    t_names = conv_names(target.features)
    chosen = A_LAYERS if layers == "paper" else tuple(a_names)
    mapping = {f"features.{a_names[n]}": f"features.{t_names[n]}" for n in chosen}
    mapping.update({f"classifier.{i}": f"classifier.{i}" for i in FC_LAYERS.values()})
    return mapping


def init_from_a(
    target: VGG,
    a_state_dict: dict[str, torch.Tensor],
    a_config: str = "A",
    layers: LayerChoice = "paper",
) -> list[str]:
    """Copy A's first four convs and three FC layers into ``target`` (``layers="all"``: every
    conv of A, the other convs set to the identity); return the copied keys."""
    if a_config not in A_CONFIGS:
        raise InitError(f"--init-from-a needs a checkpoint of config A or A-LRN, got {a_config}")
    if layers not in LAYER_CHOICES:
        raise InitError(f"unknown layer choice {layers!r}; use {' or '.join(LAYER_CHOICES)}")
    target_state = target.state_dict()
    mapping = a_layer_map(target, a_config, layers)
    updates: dict[str, torch.Tensor] = {}
    for src_prefix, dst_prefix in mapping.items():
        for suffix in ("weight", "bias"):
            src, dst = f"{src_prefix}.{suffix}", f"{dst_prefix}.{suffix}"
            if src not in a_state_dict:
                raise InitError(f"the A checkpoint has no {src}")
            if a_state_dict[src].shape != target_state[dst].shape:
                raise InitError(
                    f"cannot initialise {dst} {tuple(target_state[dst].shape)} from A's {src} "
                    f"{tuple(a_state_dict[src].shape)}: train with the same --width, --fc-width "
                    "and classes as the A checkpoint"
                )
            updates[dst] = a_state_dict[src]
    with torch.no_grad():
        for key, value in updates.items():
            target_state[key].copy_(value)
        if layers == "all":
            copied = set(mapping.values())
            for index in conv_names(target.features).values():
                conv = target.features[index]
                if f"features.{index}" not in copied:
                    identity_conv(conv)
    return list(updates)


def identity_conv(conv: nn.Conv2d) -> None:
    """Set a conv with as many outputs as inputs to the identity (Dirac kernel, zero bias)."""
    if conv.in_channels != conv.out_channels:
        raise InitError(f"an identity needs as many outputs as inputs, not {conv}")
    nn.init.dirac_(conv.weight)
    nn.init.zeros_(conv.bias)


def init_from_checkpoint(target: VGG, state_dict: dict[str, torch.Tensor]) -> None:
    """Fine-tuning (e.g. S = 384 from S = 256): every weight, same configuration and shapes."""
    own = target.state_dict()
    if set(own) != set(state_dict):
        raise InitError("--init-from checkpoint is a different configuration")
    for key, value in state_dict.items():
        if own[key].shape != value.shape:
            raise InitError(
                f"--init-from checkpoint has {key} of shape {tuple(value.shape)}, this model "
                f"{tuple(own[key].shape)}: use the same --width, --fc-width and classes"
            )
    target.load_state_dict(state_dict)
