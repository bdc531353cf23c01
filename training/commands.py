"""Command-line handlers of the training wing. Importing this module does not import torch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from model_store import CONFIGS, StoreError
from model_store.scales import ScalesError, parse_scales
from training.errors import TrainError
from training.options import (
    FINE_TUNE_LR,
    LOCALIZATION_LR,
    PAPER_LR,
    RESUME_OVERRIDES,
    SMALL_NET_RECIPE,
    TrainOptions,
    as_flags,
    flag_value,
)
from training.torchvision_names import TORCHVISION_ARCHS

DEFAULTS = TrainOptions()  # each flag of `verydeep train` takes its default from here
# The largest test scale an export records as a default. The paper tests at Q <= 512 and the
# service takes Q up to VERYDEEP_MAX_SCALE (1024 by default, docs/serving.md), which a host may
# raise; past 4096 a value is a slip (25600 for 256) rather than a scale: a single view would be
# a float32 input of over 200 MB.
MAX_EXPORT_SCALE = 4096
# As the service's VERYDEEP_MODEL_STORE setting (docs/serving.md, "Settings").
STORE_ENV, STORE_DEFAULT = "VERYDEEP_MODEL_STORE", "./model_store"
SMALL_NET = f'{as_flags(SMALL_NET_RECIPE)} (the small-net recipe, docs/training.md "A first run")'


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default after its help, unless the help says it already or the option
    is a switch, or has no default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, argparse.SUPPRESS)
            or action.nargs == 0
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def register(commands: Any) -> None:
    """Add the training wing's subcommands to the ``verydeep`` parser."""
    p = commands.add_parser(
        "export",
        help="export a training checkpoint to a fully-convolutional ONNX store entry",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint written by `verydeep train`")
    _store_args(p)
    p.add_argument(
        "--classifier",
        metavar="NAME",
        help="a localisation checkpoint: the store's model or ensemble that ranks the classes "
        "when a request names none (docs/localization.md)",
    )
    p.set_defaults(handler=_export)
    _register_import(commands)
    _register_train(commands)
    _register_make_shapes(commands)


def _register_import(commands: Any) -> None:
    p = commands.add_parser(
        "import-torchvision",
        help="import torchvision VGG weights into the model store",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "arch", choices=tuple(TORCHVISION_ARCHS), help="vgg11, vgg13, vgg16 or vgg19 (A, B, D, E)"
    )
    p.add_argument(
        "--weights",
        help="a torchvision state-dict file (.pth); without it the official file is downloaded",
    )
    _store_args(p)
    p.set_defaults(handler=_import_torchvision)


def _register_train(commands: Any) -> None:
    p = commands.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train a VGG configuration with the paper's protocol (torchrun for several GPUs)",
        description="Train a VGG configuration with the paper's protocol (VGG §3.1): SGD, "
        "momentum 0.9, weight decay 5e-4, batch 256, dropout 0.5, lr 1e-2 divided by 10 when "
        "validation accuracy stops improving (three times, then stop), random 224 crops of "
        "images rescaled to S (fixed or jittered), flips, PCA colour shift, mean RGB "
        "subtraction. Run under torchrun for several GPUs or nodes.",
    )
    _train_args(p)
    p.set_defaults(handler=_train)


def _register_make_shapes(commands: Any) -> None:
    p = commands.add_parser(
        "make-shapes",
        help="write a labelled `shapes` image folder (ImageFolder layout)",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "dir", help="output folder (created; DIR/<class>/*.jpg and DIR/annotations.json)"
    )
    p.add_argument("--per-class", type=_positive_int, default=500, help="images per class")
    p.add_argument("--seed", type=int, default=0, help="the same seed writes the same images")
    p.add_argument(
        "--classes",
        metavar="A,B,...",
        help="the classes to write, by name (default: the 8 demo classes); also shapes the "
        "demo models never saw: arrow, crescent, diamond, ellipse, octagon, pentagon, "
        "semicircle, trapezoid",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 4)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the shapes folder DIR holds (a folder that is not one is never deleted)",
    )
    p.set_defaults(handler=_make_shapes)


def _train_args(p: argparse.ArgumentParser) -> None:
    _model_args(p.add_argument_group("model"))
    _localization_args(p.add_argument_group("localisation (paper Appendix A)"))
    _data_args(p.add_argument_group("data"))
    _optimisation_args(p.add_argument_group("optimisation"))
    _run_args(p.add_argument_group("run"))


def _model_args(g: Any) -> None:
    _option(g, "--config", choices=CONFIGS, help="Table 1 configuration")
    _option(
        g, "--width", type=float,
        help=f"conv width multiplier; below 1 the options not given take {SMALL_NET}",
    )  # fmt: skip
    _option(g, "--fc-width", type=_positive_int, help="fc6/fc7 width (the paper's 4096)")
    _option(
        g, "--init", choices=("normal", "glorot", "kaiming"), small_net=True,
        help="random init: the paper's N(0, 1e-2), Glorot & Bengio, or He et al.; with "
        "--init-from-a, of the layers not copied from A",
    )  # fmt: skip
    _option(
        g, "--init-from", metavar="CKPT",
        help="fine-tune every layer from a checkpoint of the same config (e.g. S=384 from "
        f"S=256, or jittered S from S=384), or from a store entry folder (STORE/NAME, its "
        f"weights read from the ONNX file); lr defaults to {_power_of_ten(FINE_TUNE_LR)}",
    )  # fmt: skip
    _option(
        g, "--init-from-a", metavar="CKPT",
        help="initialise the first four convs and the three FC layers from a trained config A",
    )  # fmt: skip
    _option(
        g, "--a-layers", choices=("paper", "all"),
        help="with --init-from-a: the paper's four convs and three FC layers (default), or all "
        "of A's layers with the deeper net's other convs set to the identity (Net2Net), so "
        "that it starts with A's accuracy",
    )  # fmt: skip


def _localization_args(g: Any) -> None:
    _option(
        g, "--task", choices=("classification", "localization"),
        help="localization: the classification net of --init-from with its last layer replaced "
        f"by a box regressor, Euclidean loss, lr {_power_of_ten(LOCALIZATION_LR)} "
        "(docs/localization.md, Training)",
    )  # fmt: skip
    _option(
        g, "--regression", choices=("per-class", "single"),
        help="the box regressor: per-class (PCR, 4 x K outputs) or single (SCR, 4)",
    )  # fmt: skip
    _option(
        g, "--tune", choices=("all", "fc"),
        help="fine-tune all layers, or only fc6, fc7 and the regressor (the convs frozen)",
    )  # fmt: skip
    _option(
        g, "--boxes", metavar="DIR",
        help="ILSVRC VOC XML boxes of --data (DIR/<class>/<stem>.xml or DIR/<stem>.xml; "
        "default: --data's annotations.json)",
    )  # fmt: skip
    _option(
        g, "--val-boxes", metavar="DIR",
        help="VOC XML boxes of --val-data (default: its annotations.json)",
    )  # fmt: skip


def _data_args(g: Any) -> None:
    src = g.add_mutually_exclusive_group()
    _option(src, "--data", metavar="DIR", help="training image folder (DIR/<class>/*)")
    _option(src, "--dataset", choices=("shapes",), help="the built-in procedural dataset")
    _option(
        g, "--val-data", metavar="DIR",
        help="validation image folder (default: hold out --val-fraction of --data; for "
        "--dataset shapes a generated set with seed + 1)",
    )  # fmt: skip
    _option(g, "--val-fraction", type=float, help="share of --data held out without --val-data")
    _option(
        g, "--shapes-per-class", type=_positive_int,
        help="--dataset shapes: training images per class",
    )  # fmt: skip
    _option(
        g, "--shapes-val-per-class", type=_positive_int,
        help="--dataset shapes: validation images per class",
    )  # fmt: skip
    _option(
        g, "--shapes-seed", type=int,
        help="--dataset shapes: seed of the training images (validation: seed + 1)",
    )  # fmt: skip
    _option(
        g, "--data-cache", metavar="DIR",
        help="where shapes are generated (default: ~/.cache/verydeep)",
    )  # fmt: skip
    # Either --scale or both of --scale-min and --scale-max (checked in _train_options).
    g.add_argument(
        "--scale", type=_train_scale, metavar="S",
        help=f"fixed training scale S (default: {DEFAULTS.scale_min})",
    )  # fmt: skip
    g.add_argument("--scale-min", type=_train_scale, metavar="S_MIN", help="jittered S: minimum")
    g.add_argument("--scale-max", type=_train_scale, metavar="S_MAX", help="jittered S: maximum")
    _option(
        g, "--color-shift", type=float,
        help="std of the PCA colour shift coefficients (0 turns it off)",
    )  # fmt: skip
    _option(
        g, "--input-std", metavar="STD", small_net=True,
        help="divide the mean-subtracted pixels by STD: 1 (the paper's) or 'data' (the training "
        "set's per-channel std; recorded in the manifest's preprocessing)",
    )  # fmt: skip
    _option(
        g, "--workers", type=int, resume_override=True,
        help="data-loading processes per process (default: one per CPU core, at most 4)",
    )  # fmt: skip


def _optimisation_args(g: Any) -> None:
    _option(
        g, "--epochs", type=_positive_int, resume_override=True,
        help="at most this many epochs",
    )  # fmt: skip
    _option(
        g, "--lr", type=float,
        help=f"initial learning rate (default: {_power_of_ten(PAPER_LR)}; "
        f"{_power_of_ten(FINE_TUNE_LR)} with --init-from)",
    )  # fmt: skip
    _option(g, "--momentum", type=float, help="SGD momentum")
    _option(g, "--weight-decay", type=float, help="L2 penalty on the weights")
    _option(
        g, "--batch-size", type=_positive_int,
        help="effective batch over all processes",
    )  # fmt: skip
    _option(
        g, "--micro-batch", type=_positive_int,
        help="images per forward pass; gradients accumulate to --batch-size (default: all)",
    )  # fmt: skip
    _option(g, "--dropout", type=float, small_net=True, help="fc6/fc7 dropout")
    _option(
        g, "--patience", type=int,
        help="epochs without a better validation accuracy that are tolerated: lr / 10 after "
        "one more (as torch's ReduceLROnPlateau counts)",
    )  # fmt: skip
    _option(
        g, "--warmup-epochs", type=float,
        help="linear lr warm-up (not in the paper; helps narrow nets from scratch)",
    )  # fmt: skip
    _option(
        g, "--clip-grad-norm", type=float, metavar="NORM", small_net=True,
        help="clip the batch gradient's norm (not in the paper; 0 turns it off)",
    )  # fmt: skip
    _option(
        g, "--max-steps", type=_positive_int, resume_override=True,
        help="stop (with a checkpoint) after N steps",
    )  # fmt: skip
    _option(g, "--val-flip", action="store_true", help="validate with flipped views too")
    _option(
        g, "--amp", action=argparse.BooleanOptionalAction, resume_override=True,
        help="mixed precision (default: on for CUDA)",
    )  # fmt: skip


def _run_args(g: Any) -> None:
    _option(g, "--out", help="run folder (checkpoints, logs, curves)")
    _option(
        g, "--resume", nargs="?", const="auto", metavar="CKPT",
        help="continue a run from OUT/last.pt (or CKPT) with its saved options; --epochs, "
        "--max-steps, --workers, --device and --amp may be changed",
    )  # fmt: skip
    _option(g, "--seed", type=int, help="seed of the weights, the sample order and augmentation")
    _option(g, "--device", resume_override=True, help="auto (default), cpu, cuda or cuda:N")
    _option(g, "--no-progress", dest="progress", action="store_false", help="no progress bar")
    _option(
        g, "--no-tensorboard", dest="tensorboard", action="store_false",
        help="no TensorBoard event files",
    )  # fmt: skip


def _option(
    group: Any,
    flag: str,
    *,
    resume_override: bool = False,
    small_net: bool = False,
    help: str | None = None,
    **kw: Any,
) -> None:
    """``flag`` for the ``TrainOptions`` field of the same name (or ``dest``), with that field's
    default. With ``resume_override`` or ``small_net`` the parsed default is None instead, so
    that the command can tell a value given from one not given: a resumed run takes only the
    given ones, and below --width 1 the small-net recipe fills in the others."""
    dest = kw.setdefault("dest", flag.removeprefix("--").replace("-", "_"))
    if resume_override or small_net:
        kw["default"] = None
        help = _unset_help(help or "", getattr(DEFAULTS, dest), dest if small_net else None)
    else:
        kw["default"] = getattr(DEFAULTS, dest)
    group.add_argument(flag, help=help, **kw)


def _unset_help(text: str, default: Any, recipe_key: str | None) -> str:
    """The help of an option parsed as None, with the default it stands for."""
    if "default" in text or (default is None and not recipe_key):
        return text
    small = f"; {flag_value(SMALL_NET_RECIPE[recipe_key])} below --width 1" if recipe_key else ""
    return f"{text} (default: {flag_value(default)}{small})"


def _power_of_ten(value: float) -> str:
    """``1e-2`` as the paper writes it, not ``0.01``."""
    return f"{value:.0e}".replace("e-0", "e-")


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
    p.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV) or STORE_DEFAULT,
        help=f"model store directory (${STORE_ENV}, else {STORE_DEFAULT})",
    )
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
    p.add_argument(
        "--int8",
        action="store_true",
        help="statically quantised int8 graph for CPU hosts, float32 input and output "
        "(needs --calibration; docs/training.md, int8 export)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="images to calibrate --int8 on (at least 8 decodable; the first 32 are used)",
    )


def _scales(text: str) -> list[int]:
    try:
        return parse_scales(text, max_scale=MAX_EXPORT_SCALE)
    except ScalesError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
        calibration=_calibration(args),
        classifier=args.classifier,
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
        calibration=_calibration(args),
    )
    print(f"wrote {entry.path} ({entry.manifest.parameters:,} parameters)")
    return 0


@_fail_cleanly
def _train(args: argparse.Namespace) -> int:
    from training.train import train

    opts = _train_options(args)
    # A resumed run keeps its saved options but for these: the ones given on the command line,
    # and --no-progress / --no-tensorboard, never None, which apply to any run.
    given = [k for k in RESUME_OVERRIDES if getattr(args, k) is not None]
    result = train(opts, overrides=given)
    if result.stopped == "signal":
        if result.last.exists():
            print(f"interrupted: continue from {result.last} with --out {result.out} --resume")
        else:
            print("interrupted before the first checkpoint")
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done ({result.stopped}): {result.global_step} steps; checkpoints in {result.out}")
    return 0


def _train_options(args: argparse.Namespace) -> TrainOptions:
    """The parsed flags as ``TrainOptions``: the fields of the same name, with the dataclass
    default where a flag was not given (None), and the training scale from --scale or
    --scale-min / --scale-max."""
    if args.scale is not None and (args.scale_min is not None or args.scale_max is not None):
        raise TrainError("give --scale S or --scale-min/--scale-max, not both")
    if (args.scale_min is None) != (args.scale_max is None):
        raise TrainError("give both --scale-min and --scale-max")
    values = {
        f.name: getattr(args, f.name)
        for f in fields(TrainOptions)
        if getattr(args, f.name, None) is not None
    }
    values["scale_min"] = args.scale_min or args.scale or DEFAULTS.scale_min
    values["scale_max"] = args.scale_max or args.scale or DEFAULTS.scale_max
    if not args.resume:
        _small_net_defaults(values)
    return TrainOptions(**values)


def _small_net_defaults(values: dict[str, Any]) -> None:
    """Below --width 1 the options of the small-net recipe not given take its values (the
    paper's defaults diverge there: docs/training.md, "A first run"); one log line says so."""
    width = values.get("width", DEFAULTS.width)
    chosen = {k: v for k, v in SMALL_NET_RECIPE.items() if k not in values}
    if width >= 1 or not chosen:
        return
    values.update(chosen)
    if int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger("training.train").info(
            '--width %g is below 1: %s, the small-net recipe (docs/training.md, "A first '
            'run"); give these options to choose otherwise',
            width,
            as_flags(chosen),
        )


@_fail_cleanly
def _make_shapes(args: argparse.Namespace) -> int:
    from training.shapes import select_classes, write_shapes

    try:
        classes = select_classes(args.classes)
        root = write_shapes(
            args.dir,
            args.per_class,
            args.seed,
            classes=classes,
            workers=args.workers,
            overwrite=args.force,
        )
    except (FileExistsError, ValueError) as err:
        print(f"verydeep make-shapes: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.per_class * len(classes)} images of {len(classes)} classes to {root} "
        "(boxes in annotations.json)"
    )
    return 0


def _dtype(args: argparse.Namespace) -> str:
    if args.int8:
        return "int8"
    return "float16" if args.fp16 else "float32"


def _calibration(args: argparse.Namespace) -> str | None:
    """--int8's calibration folder, checked against --fp16 and --calibration."""
    from training.errors import UserFacingError

    if args.int8 and args.fp16:
        raise UserFacingError("--int8 and --fp16 exclude each other")
    if args.int8 != (args.calibration is not None):
        raise UserFacingError("--int8 and --calibration DIR go together")
    return args.calibration
