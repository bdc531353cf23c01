"""Paper §3.1: a deeper net takes A's first four convs and three FC layers, nothing else."""

from __future__ import annotations

import pytest
import torch

from training.init_from import A_LAYERS, InitError, conv_names, init_from_a
from training.vgg import build_vgg

W, FC, K = 1 / 16, 32, 5


@pytest.mark.parametrize("config", ["B", "C", "D", "E"])
@pytest.mark.parametrize("a_config", ["A", "A-LRN"])
def test_copies_exactly_the_first_four_convs_and_the_fc_layers(config: str, a_config: str) -> None:
    torch.manual_seed(0)
    a = build_vgg(a_config, K, width=W, fc_width=FC, init="normal")
    torch.manual_seed(1)
    deep = build_vgg(config, K, width=W, fc_width=FC, init="glorot")
    fresh = {k: v.clone() for k, v in deep.state_dict().items()}
    copied = init_from_a(deep, a.state_dict(), a_config)

    a_names, d_names = conv_names(a.features), conv_names(deep.features)
    expected = {f"classifier.{i}.{s}" for i in (0, 3, 6) for s in ("weight", "bias")}
    for name in A_LAYERS:
        expected |= {f"features.{d_names[name]}.{s}" for s in ("weight", "bias")}
        for s in ("weight", "bias"):
            assert torch.equal(
                deep.state_dict()[f"features.{d_names[name]}.{s}"],
                a.state_dict()[f"features.{a_names[name]}.{s}"],
            )
    assert set(copied) == expected
    for i in (0, 3, 6):
        assert torch.equal(deep.classifier[i].weight, a.classifier[i].weight)
    state = deep.state_dict()
    for key, value in state.items():
        if key not in expected:
            assert torch.equal(value, fresh[key]), f"{key} must keep its own initialisation"
    # Four convs and three FC layers: 14 tensors.
    assert len(expected) == 14


def test_shapes_must_match() -> None:
    a = build_vgg("A", K, width=W, fc_width=FC)
    with pytest.raises(InitError, match="same --width"):
        init_from_a(build_vgg("D", K, width=W * 2, fc_width=FC), a.state_dict())
    with pytest.raises(InitError, match="same --width"):
        init_from_a(build_vgg("D", K, width=W, fc_width=FC * 2), a.state_dict())
    with pytest.raises(InitError, match="config A"):
        init_from_a(build_vgg("D", K, width=W, fc_width=FC), a.state_dict(), "D")


@pytest.mark.parametrize("config", ["B", "C", "D", "E"])
def test_all_layers_deepens_a_into_the_same_function(config: str) -> None:
    torch.manual_seed(0)
    a = build_vgg("A", K, width=W, fc_width=FC, init="glorot").eval()
    with torch.no_grad():  # non-zero biases, so that a bias slip would show
        for p in a.parameters():
            if p.dim() == 1:
                p.uniform_(-0.1, 0.1)
    torch.manual_seed(1)
    deep = build_vgg(config, K, width=W, fc_width=FC, init="kaiming").eval()
    copied = init_from_a(deep, a.state_dict(), "A", layers="all")

    a_names, d_names = conv_names(a.features), conv_names(deep.features)
    assert len(copied) == 2 * (len(a_names) + 3)  # every conv of A and fc6, fc7, fc8
    for name, index in d_names.items():
        conv = deep.features[index]
        if name in a_names:
            assert torch.equal(conv.weight, a.features[a_names[name]].weight), name
        else:
            identity = torch.zeros_like(conv.weight)
            centre = conv.kernel_size[0] // 2
            identity[range(conv.out_channels), range(conv.in_channels), centre, centre] = 1
            assert torch.equal(conv.weight, identity) and not conv.bias.any(), name
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(deep(x), a(x), rtol=1e-5, atol=1e-5)


def test_unknown_layer_choice_is_refused() -> None:
    a = build_vgg("A", K, width=W, fc_width=FC)
    with pytest.raises(InitError, match="unknown layer choice 'some'"):
        init_from_a(build_vgg("D", K, width=W, fc_width=FC), a.state_dict(), layers="some")  # type: ignore[arg-type]
