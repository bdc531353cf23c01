"""The model a run starts from and its optimiser: ``--init``, then ``--init-from`` (fine-tuning,
paper §3.1) or ``--init-from-a`` (deeper nets from a trained A), dropout, SGD with momentum."""

from __future__ import annotations

import logging

import torch
from torch import nn

from training.checkpoint import load_checkpoint
from training.distributed import Dist
from training.errors import TrainError
from training.init_from import init_from_a, init_from_checkpoint
from training.options import TrainOptions
from training.vgg import VGG, build_vgg

log = logging.getLogger("training.train")  # one logger for the whole of `verydeep train`


def build_model(opts: TrainOptions, num_classes: int, d: Dist, *, pretrained: bool = True) -> VGG:
    """The initial model: ``--init``, then ``--init-from`` or ``--init-from-a`` (unless
    ``pretrained`` is False: a resumed run loads its own weights next)."""
    torch.manual_seed(opts.seed)  # the same initial weights on every rank
    model = build_vgg(
        opts.config, num_classes, width=opts.width, fc_width=opts.fc_width, init=opts.init
    )
    if pretrained and opts.init_from:
        init_from_checkpoint(model, _checkpoint_for_init(opts.init_from, opts, "--init-from"))
        if d.main:
            log.info("initialised every layer from %s", opts.init_from)
    elif pretrained and opts.init_from_a:
        ckpt = load_checkpoint(opts.init_from_a)
        _check_labels(ckpt.num_classes, num_classes, "--init-from-a")
        copied = init_from_a(model, ckpt.state_dict, ckpt.config, opts.a_layers)
        if d.main:
            log.info("initialised %s from %s", ", ".join(copied), opts.init_from_a)
            if opts.a_layers == "all":
                log.info("the convs A does not have start as the identity (Net2Net deepening)")
    set_dropout(model, opts.dropout)
    return model


def _check_labels(theirs: int, ours: int, flag: str) -> None:
    if theirs != ours:
        raise TrainError(f"{flag} checkpoint has {theirs} classes, the training data {ours}")


def _checkpoint_for_init(path: str, opts: TrainOptions, flag: str) -> dict[str, torch.Tensor]:
    return init_source(path, opts, flag)[0]


def init_source(
    path: str | None, opts: TrainOptions, flag: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state_dict, labels)`` of the classification net ``path`` names: a checkpoint of
    ``verydeep train``, or a store entry folder (``STORE/NAME``), its net rebuilt from the ONNX
    file's weights and checked against onnxruntime (``training.from_onnx``)."""
    from training.from_onnx import is_store_entry, load_store_entry

    if path is None:
        raise TrainError(f"{flag} is needed: the classification net to start from")
    if is_store_entry(path):
        net = load_store_entry(path)
        config, state_dict, labels = net.config, net.model.state_dict(), net.labels
        kind = "store entry"
    else:
        ckpt = load_checkpoint(path)
        if ckpt.localization is not None:
            raise TrainError(f"{flag} {path} is a localisation net; a classification net is needed")
        config, state_dict, labels = ckpt.config, ckpt.state_dict, ckpt.labels
        kind = "checkpoint"
    if config != opts.config:
        raise TrainError(f"{flag} {kind} is config {config}, not {opts.config}")
    return state_dict, labels


def set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def make_optimizer(model: nn.Module, opts: TrainOptions, lr: float) -> torch.optim.SGD:
    """SGD over the parameters that train (``--tune fc`` leaves the frozen convs out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
