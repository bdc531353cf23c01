"""Table 1 and Table 2: layer layout, parameter counts and torchvision compatibility."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from model_store import CONFIGS
from training.torchvision_names import TORCHVISION_ARCHS
from training.vgg import LAYERS, build_vgg, count_parameters, init_weights, weight_layers

PARAMETERS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}
WEIGHT_LAYERS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}
TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def full_size(config: str) -> nn.Module:
    with torch.device("meta"):
        return build_vgg(config, init=None)


@pytest.mark.parametrize("config", CONFIGS)
def test_exact_parameter_counts(config: str) -> None:
    model = full_size(config)
    assert count_parameters(model) == PARAMETERS[config]
    assert weight_layers(model) == WEIGHT_LAYERS[config]


def test_a_lrn_has_one_lrn_after_the_first_relu() -> None:
    features = full_size("A-LRN").features
    lrns = [i for i, m in enumerate(features) if isinstance(m, nn.LocalResponseNorm)]
    assert lrns == [2]
    assert isinstance(features[0], nn.Conv2d) and isinstance(features[1], nn.ReLU)
    assert isinstance(features[3], nn.MaxPool2d)
    lrn = features[2]
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)


def test_c_has_three_unpadded_1x1_convs_at_the_end_of_blocks_3_to_5() -> None:
    convs = [m for m in full_size("C").features if isinstance(m, nn.Conv2d)]
    ones = [(i, c.out_channels) for i, c in enumerate(convs) if c.kernel_size == (1, 1)]
    assert ones == [(6, 256), (9, 512), (12, 512)]
    assert all(convs[i].padding == (0, 0) for i, _ in ones)
    assert all(c.padding == (1, 1) for c in convs if c.kernel_size == (3, 3))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_block_ends_in_a_2x2_stride_2_max_pool(config: str) -> None:
    pools = [m for m in full_size(config).features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5
    assert all(p.kernel_size == 2 and p.stride == 2 for p in pools)


def test_classifier_is_fc6_fc7_fc8_with_dropout() -> None:
    c = full_size("D").classifier
    assert [type(m) for m in c] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert (c[0].in_features, c[0].out_features, c[3].out_features) == (25088, 4096, 4096)
    assert c[2].p == c[5].p == 0.5


def test_one_list_of_config_names() -> None:
    assert tuple(LAYERS) == CONFIGS
    assert {config: arch for arch, config in TORCHVISION_ARCHS.items()} == TORCHVISION


@pytest.mark.parametrize(("config", "arch"), TORCHVISION.items())
def test_state_dict_matches_torchvision(config: str, arch: str) -> None:
    with torch.device("meta"):
        theirs = getattr(torchvision.models, arch)().state_dict()
    ours = full_size(config).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_width_and_fc_width_scale_the_net() -> None:
    model = build_vgg("D", 10, width=0.25, fc_width=128)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs][:3] == [16, 16, 32]
    assert convs[-1].out_channels == 128
    assert model.classifier[0].in_features == 128 * 49
    assert model.classifier[3].out_features == 128 and model.num_classes == 10


def test_normal_init_is_the_papers() -> None:
    torch.manual_seed(0)
    model = build_vgg("A", 10, width=0.5, fc_width=512, init="normal")
    weights = torch.cat([m.weight.flatten() for m in model.modules() if hasattr(m, "bias")])
    assert weights.mean().abs() < 1e-3
    assert weights.var().item() == pytest.approx(1e-2, rel=0.02)
    assert all(m.bias.abs().sum() == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_glorot_init_bounds() -> None:
    model = build_vgg("A", 10, width=0.25, fc_width=64, init=None)
    init_weights(model, "glorot")
    conv = model.features[0]
    fan_in, fan_out = 3 * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound
    assert conv.bias.abs().sum() == 0


def test_kaiming_init_keeps_the_signal_scale_through_relu_layers() -> None:
    model = build_vgg("D", 10, width=0.25, fc_width=64, init=None)
    init_weights(model, "kaiming")
    conv = model.features[2]  # conv1_2: 16 -> 16 channels, fan-in 144
    assert conv.weight.var().item() == pytest.approx(2 / (16 * 9), rel=0.1)
    assert conv.bias.abs().sum() == 0
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        deep = model.features[:-1](x)  # 13 conv + ReLU layers, four pools
    ratio = deep.pow(2).mean().item() / x.pow(2).mean().item()
    assert 0.05 < ratio < 20, ratio  # Glorot would shrink it by about 2^-13


def test_fc_net_refuses_other_than_224() -> None:
    model = build_vgg("A", 3, width=1 / 16, fc_width=16)
    with pytest.raises(ValueError, match="224x224 crops"):
        model(torch.zeros(1, 3, 256, 256))


def test_unknown_config_refused() -> None:
    with pytest.raises(ValueError, match="unknown VGG config 'F'"):
        build_vgg("F")
