"""Command-line handlers of the training wing. Importing this module does not import torch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from model_store import CONFIGS, StoreError
from training.torchvision_names import TORCHVISION_ARCHS


def register(commands: Any) -> None:
    """Add the training wing's subcommands to the ``verydeep`` parser."""
    p = commands.add_parser(
        "export", help="export a training checkpoint to a fully-convolutional ONNX store entry"
    )
    p.add_argument("checkpoint", help="checkpoint written by `verydeep train`")
    _store_args(p)
    p.set_defaults(handler=_export)

    p = commands.add_parser(
        "import-torchvision", help="import torchvision VGG weights into the model store"
    )
    p.add_argument("arch", choices=tuple(TORCHVISION_ARCHS))
    p.add_argument(
        "--weights",
        help="a torchvision state-dict file (.pth); without it the official file is downloaded",
    )
    _store_args(p)
    p.set_defaults(handler=_import_torchvision)

    p = commands.add_parser(
        "train",
        help="train a VGG configuration with the paper's protocol (torchrun for several GPUs)",
        description="Train a VGG configuration with the paper's protocol (VGG §3.1): SGD, "
        "momentum 0.9, weight decay 5e-4, batch 256, dropout 0.5, lr 1e-2 divided by 10 when "
        "validation accuracy stops improving (three times, then stop), random 224 crops of "
        "images rescaled to S (fixed or jittered), flips, PCA colour shift, mean RGB "
        "subtraction. Run under torchrun for several GPUs or nodes.",
    )
    _train_args(p)
    p.set_defaults(handler=_train)

    p = commands.add_parser(
        "make-shapes", help="write a labelled `shapes` image folder (ImageFolder layout)"
    )
    p.add_argument("dir", help="output folder (created; DIR/<class>/*.jpg)")
    p.add_argument("--per-class", type=_positive_int, default=500, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same images")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    p.set_defaults(handler=_make_shapes)


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", choices=CONFIGS, default="A", help="Table 1 configuration")
    g.add_argument("--width", type=float, default=1.0, help="conv width multiplier (default 1)")
    g.add_argument("--fc-width", type=_positive_int, default=4096, help="fc6/fc7 width")
    g.add_argument(
        "--init", choices=("normal", "glorot", "kaiming"), default="normal",
        help="random init: the paper's N(0, 1e-2) (default), Glorot & Bengio, or He et al.; "
        "with --init-from-a, of the layers not copied from A",
    )  # fmt: skip
    g.add_argument(
        "--init-from", metavar="CKPT",
        help="fine-tune every layer from a checkpoint of the same config (e.g. S=384 from "
        "S=256, or jittered S from S=384); lr defaults to 1e-3",
    )  # fmt: skip
    g.add_argument(
        "--init-from-a", metavar="CKPT",
        help="initialise the first four convs and the three FC layers from a trained config A",
    )  # fmt: skip
    g.add_argument(
        "--a-layers", choices=("paper", "all"), default="paper",
        help="with --init-from-a: the paper's four convs and three FC layers (default), or all "
        "of A's layers with the deeper net's other convs set to the identity (Net2Net), so "
        "that it starts with A's accuracy",
    )  # fmt: skip

    g = p.add_argument_group("data")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="training image folder (DIR/<class>/*)")
    src.add_argument("--dataset", choices=("shapes",), help="the built-in procedural dataset")
    g.add_argument(
        "--val-data", metavar="DIR",
        help="validation image folder (default: hold out --val-fraction of --data; for "
        "--dataset shapes a generated set with seed + 1)",
    )  # fmt: skip
    g.add_argument("--val-fraction", type=float, default=0.05, help="held-out share (0.05)")
    g.add_argument("--shapes-per-class", type=_positive_int, default=500)
    g.add_argument("--shapes-val-per-class", type=_positive_int, default=100)
    g.add_argument("--shapes-seed", type=int, default=0)
    g.add_argument(
        "--data-cache", metavar="DIR", help="where shapes are generated (~/.cache/verydeep)"
    )
    g.add_argument(
        "--scale", type=_train_scale, metavar="S", help="fixed training scale S (default 256)"
    )
    g.add_argument("--scale-min", type=_train_scale, metavar="S_MIN", help="jittered S: minimum")
    g.add_argument("--scale-max", type=_train_scale, metavar="S_MAX", help="jittered S: maximum")
    g.add_argument(
        "--color-shift", type=float, default=0.1,
        help="std of the PCA colour shift coefficients (0.1; 0 turns it off)",
    )  # fmt: skip
    g.add_argument(
        "--input-std", default="1", metavar="STD",
        help="divide the mean-subtracted pixels by STD: 1 (the paper's default) or 'data' "
        "(the training set's per-channel std; recorded in the manifest's preprocessing)",
    )  # fmt: skip
    g.add_argument("--workers", type=int, help="data-loading processes per process (4)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, help="at most this many epochs (74)")
    g.add_argument("--lr", type=float, help="initial learning rate (1e-2; 1e-3 with --init-from)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument(
        "--batch-size", type=_positive_int, default=256,
        help="effective batch over all processes (256)",
    )  # fmt: skip
    g.add_argument(
        "--micro-batch", type=_positive_int,
        help="images per forward pass; gradients accumulate to --batch-size (default: all)",
    )  # fmt: skip
    g.add_argument("--dropout", type=float, default=0.5, help="fc6/fc7 dropout (0.5)")
    g.add_argument(
        "--patience", type=int, default=2,
        help="epochs without a better validation accuracy that are tolerated: lr / 10 after "
        "one more (2, as torch's ReduceLROnPlateau counts)",
    )  # fmt: skip
    g.add_argument(
        "--warmup-epochs", type=float, default=0.0,
        help="linear lr warm-up (not in the paper; helps narrow nets from scratch)",
    )  # fmt: skip
    g.add_argument(
        "--clip-grad-norm", type=float, metavar="NORM",
        help="clip the batch gradient's norm (not in the paper; off by default)",
    )  # fmt: skip
    g.add_argument("--max-steps", type=_positive_int, help="stop (with a checkpoint) after N steps")
    g.add_argument("--val-flip", action="store_true", help="validate with flipped views too")
    g.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None,
        help="mixed precision (default: on for CUDA)",
    )  # fmt: skip

    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/train", help="run folder (checkpoints, logs, curves)")
    g.add_argument(
        "--resume", nargs="?", const="auto", metavar="CKPT",
        help="continue a run from OUT/last.pt (or CKPT) with its saved options; --epochs, "
        "--max-steps, --workers, --device and --amp may be changed",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _train_scale(text: str) -> int:
    value = int(text)
    if value < 224:
        raise argparse.ArgumentTypeError(f"a training scale must be >= 224, got {value}")
    return value


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="model store directory")
    p.add_argument("--name", required=True, help="name of the new entry")
    p.add_argument(
        "--test-scales",
        type=_scales,
        help="comma-separated default test scales Q (default: from the training scale, paper §4.2)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing entry")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="float16 weights, input and output (half the size; for CUDA hosts)",
    )


def _scales(text: str) -> list[int]:
    try:
        scales = [int(q) for q in text.split(",")]
    except ValueError:
        msg = f"not a comma-separated list of integers: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if any(q < 224 for q in scales):
        raise argparse.ArgumentTypeError("every test scale must be >= 224")
    return scales


def _fail_cleanly(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from training.errors import UserFacingError

        try:
            return run(args)
        except (UserFacingError, StoreError) as err:
            print(f"verydeep {args.command}: error: {err}", file=sys.stderr)
            return 2

    return handler


@_fail_cleanly
def _export(args: argparse.Namespace) -> int:
    from training.export_checkpoint import export_checkpoint

    entry = export_checkpoint(
        args.checkpoint,
        args.store,
        args.name,
        test_scales=args.test_scales,
        overwrite=args.force,
        dtype=_dtype(args),
    )
    print(f"wrote {entry.path} ({entry.manifest.parameters:,} parameters)")
    return 0


@_fail_cleanly
def _import_torchvision(args: argparse.Namespace) -> int:
    from training.torchvision_import import import_torchvision

    entry = import_torchvision(
        args.arch,
        args.store,
        args.name,
        weights=args.weights,
        test_scales=args.test_scales,
        overwrite=args.force,
        dtype=_dtype(args),
    )
    print(f"wrote {entry.path} ({entry.manifest.parameters:,} parameters)")
    return 0


@_fail_cleanly
def _train(args: argparse.Namespace) -> int:
    from training.errors import TrainError
    from training.options import TrainOptions
    from training.train import train

    if args.scale is not None and (args.scale_min is not None or args.scale_max is not None):
        raise TrainError("give --scale S or --scale-min/--scale-max, not both")
    if (args.scale_min is None) != (args.scale_max is None):
        raise TrainError("give both --scale-min and --scale-max")
    s_min = args.scale_min or args.scale or 256
    s_max = args.scale_max or args.scale or 256
    opts = TrainOptions(
        out=args.out,
        config=args.config,
        data=args.data,
        dataset=args.dataset,
        val_data=args.val_data,
        val_fraction=args.val_fraction,
        shapes_per_class=args.shapes_per_class,
        shapes_val_per_class=args.shapes_val_per_class,
        shapes_seed=args.shapes_seed,
        data_cache=args.data_cache,
        width=args.width,
        fc_width=args.fc_width,
        scale_min=s_min,
        scale_max=s_max,
        epochs=args.epochs or 74,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        dropout=args.dropout,
        color_shift=args.color_shift,
        input_std=args.input_std,
        patience=args.patience,
        warmup_epochs=args.warmup_epochs,
        clip_grad_norm=args.clip_grad_norm,
        max_steps=args.max_steps,
        val_flip=args.val_flip,
        workers=4 if args.workers is None else args.workers,
        init=args.init,
        init_from=args.init_from,
        init_from_a=args.init_from_a,
        a_layers=args.a_layers,
        seed=args.seed,
        device=args.device or "auto",
        amp=args.amp,
        resume=args.resume,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )
    # A resumed run keeps its saved options but for these, when given on the command line.
    given = [
        k
        for k in ("epochs", "max_steps", "workers", "device", "amp")
        if getattr(args, k) is not None
    ]
    result = train(opts, overrides=[*given, "progress", "tensorboard"])
    if result.stopped == "signal":
        if result.last.exists():
            print(f"interrupted: continue from {result.last} with --out {result.out} --resume")
        else:
            print("interrupted before the first checkpoint")
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done ({result.stopped}): {result.global_step} steps; checkpoints in {result.out}")
    return 0


@_fail_cleanly
def _make_shapes(args: argparse.Namespace) -> int:
    from training.shapes import CLASSES, write_shapes

    try:
        root = write_shapes(args.dir, args.per_class, args.seed, workers=args.workers)
    except (FileExistsError, ValueError) as err:
        print(f"verydeep make-shapes: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.per_class * len(CLASSES)} images of {len(CLASSES)} classes to {root}")
    return 0


def _dtype(args: argparse.Namespace) -> str:
    return "float16" if args.fp16 else "float32"
