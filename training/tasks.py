"""What a ``verydeep train`` run's task changes in the generic loop (``training.train``): the
datasets, the model it starts from, the loss of a batch, the validation and the names of its
error in the logs. ``classification`` is the paper's §3 (cross-entropy, dense validation);
``localization`` its Appendix A (a box regressor, Euclidean loss, central-crop validation;
``training.localization``).

The loop sums, per step, ``(loss, correct, count, masked)`` over micro-batches and ranks: the
loss is the sum over the step's images divided by its images per rank, ``count`` the images
that count (for localisation, those whose box the crop did not cut off) and ``masked`` the
others. A task's ``evaluate`` gives the validation sums and ``val_record`` turns their total
over the ranks into the epoch's validation fields and the accuracy that drives the schedule
and ``best.pt``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from model_store import Localization
from training.augment import eval_transform, train_transform
from training.data import AugmentedDataset, Data, RGBStats, TransformedDataset
from training.errors import TrainError
from training.model_setup import build_model, init_source, set_dropout
from training.options import TrainOptions
from training.validation import evaluate_dense
from training.vgg import VGG, build_vgg

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from training.distributed import Dist
    from training.run_setup import Run

log = logging.getLogger("training.train")  # one logger for the whole of `verydeep train`

TASKS = ("classification", "localization")
STEP_FIELDS = ("step", "epoch", "lr", "loss", "acc", "images_per_s")


class ClassificationTask:
    """The paper's classification training: softmax cross-entropy, dense validation at Q."""

    name = "classification"
    error_key = "top1_error"  # metrics.csv: train_top1_error, val_top1_error
    error_label = "top-1 error"
    val_method = "dense"
    step_fields: tuple[str, ...] = STEP_FIELDS
    extra_epoch_fields: tuple[str, ...] = ()

    def datasets(
        self, opts: TrainOptions, data: Data, stats: RGBStats, std: tuple[float, ...], q: int
    ) -> tuple[AugmentedDataset, Dataset]:
        transform = train_transform(
            opts.scale_min,
            opts.scale_max,
            stats.mean,
            stats.eigval,
            stats.eigvec,
            std=std,
            color_shift_std=opts.color_shift,
        )
        train_set = AugmentedDataset(data.train_base, transform, seed=opts.seed)
        val_set = TransformedDataset(data.val_base, eval_transform(q, stats.mean, std))
        return train_set, val_set

    def build_model(self, opts: TrainOptions, labels: list[str], d: Dist, pretrained: bool) -> VGG:
        return build_model(opts, len(labels), d, pretrained=pretrained)

    def to_device(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        return y.to(device, non_blocking=True)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """``(loss summed over the batch, correct, count)``."""
        loss = F.cross_entropy(outputs.float(), y, reduction="sum")
        return loss, float((outputs.detach().argmax(1) == y).sum()), float(len(y))

    def evaluate(self, model: VGG, run: Run) -> list[float]:
        return list(
            evaluate_dense(
                model, run.val_set, run.val_indices, run.device, flip=run.opts.val_flip,
                amp=run.amp, workers=min(run.opts.workers, 2),
            )
        )  # fmt: skip

    def val_record(self, sums: list[float]) -> tuple[dict[str, float], float]:
        val_loss, val_correct, val_count = sums
        val_acc = val_correct / max(val_count, 1)
        return {"val_loss": val_loss / max(val_count, 1), "val_top1_error": 1 - val_acc}, val_acc

    def metrics_method(self, test_scale: int) -> str:
        return f"dense, single scale Q={test_scale}"

    def checkpoint_localization(self) -> dict[str, Any] | None:
        return None


class LocalizationTask(ClassificationTask):
    """Paper Appendix A: the classification net with a box regressor for its last layer,
    the Euclidean loss of the crop's class box, central-crop validation (Table 8)."""

    name = "localization"
    error_key = "loc_error"  # metrics.csv: train_loc_error, val_loc_error
    error_label = "localisation error"
    val_method = "central crop"
    step_fields = (*STEP_FIELDS, "masked")
    extra_epoch_fields = ("train_masked",)

    def __init__(self, opts: TrainOptions) -> None:
        self.regression = opts.regression
        self.tune = opts.tune

    def datasets(
        self, opts: TrainOptions, data: Data, stats: RGBStats, std: tuple[float, ...], q: int
    ) -> tuple[AugmentedDataset, Dataset]:
        from training.localization import (
            BoxedAugmentedDataset,
            BoxedEvalDataset,
            BoxedFolder,
            BoxEvalTransform,
            BoxTrainTransform,
        )

        train_boxes = BoxedFolder(data.train_base, opts.boxes)
        # A held-out validation split takes its boxes from the training folder's source.
        val_source = opts.val_boxes if opts.val_data else opts.boxes
        val_boxes = BoxedFolder(data.val_base, val_source)
        transform = BoxTrainTransform(
            opts.scale_min,
            opts.scale_max,
            stats.mean,
            stats.eigval,
            stats.eigvec,
            std=std,
            color_shift_std=opts.color_shift,
        )
        train_set = BoxedAugmentedDataset(train_boxes, transform, seed=opts.seed)
        val_transform = BoxEvalTransform(q, stats.mean, std, max_truth=val_boxes.max_boxes)
        return train_set, BoxedEvalDataset(val_boxes, val_transform)

    def build_model(self, opts: TrainOptions, labels: list[str], d: Dist, pretrained: bool) -> VGG:
        """The classification net of ``--init-from`` (its every layer) with fc8 replaced by the
        regressor; a resumed run builds the regressor's shape and loads its own weights next."""
        from training.localization import box_outputs, freeze_convs, replace_regressor

        outputs = box_outputs(self.regression, len(labels))
        torch.manual_seed(opts.seed)  # the same initial weights on every rank
        if not pretrained:
            model = build_vgg(
                opts.config, outputs, width=opts.width, fc_width=opts.fc_width, init=None
            )
        else:
            state_dict, source_labels = init_source(opts.init_from, opts, "--init-from")
            if source_labels != labels:
                raise TrainError(
                    f"--init-from {opts.init_from} is a net of the classes {source_labels}, "
                    f"the training data's are {labels}"
                )
            model = build_vgg(
                opts.config, len(labels), width=opts.width, fc_width=opts.fc_width, init=None
            )
            from training.init_from import init_from_checkpoint

            init_from_checkpoint(model, state_dict)
            replace_regressor(model, outputs)
            if d.main:
                log.info(
                    "initialised from %s; fc8 replaced by a %s box regressor (%d outputs, "
                    "weights N(0, 0.001^2), biases 0)",
                    opts.init_from, self.regression, outputs,
                )  # fmt: skip
        if self.tune == "fc":
            frozen = freeze_convs(model)
            if d.main and pretrained:
                log.info("--tune fc: %d conv tensors frozen; fc6, fc7, fc8 train", len(frozen))
        set_dropout(model, opts.dropout)
        return model

    def to_device(self, y: Any, device: torch.device) -> Any:
        from training.localization import target_to

        return target_to(y, device)

    def loss(self, outputs: torch.Tensor, y: Any) -> tuple[torch.Tensor, float, float]:
        """``(Euclidean loss summed over the batch, crops whose predicted box has IoU >= 0.5
        with the target box, crops whose box is not cut off)``."""
        from training.localization import box_loss, class_boxes, hits, target_boxes

        loss = box_loss(outputs, y)
        valid = y["valid"].cpu().numpy()
        right = hits(class_boxes(outputs.detach().float(), y["label"]), target_boxes(y))
        return loss, float((right & valid).sum()), float(valid.sum())

    def evaluate(self, model: VGG, run: Run) -> list[float]:
        from training.localization import evaluate_central_crop

        return evaluate_central_crop(
            model, run.val_set, run.val_indices, run.device, batch_size=run.micro, amp=run.amp,
            workers=min(run.opts.workers, 2),
        )  # fmt: skip

    def val_record(self, sums: list[float]) -> tuple[dict[str, float], float]:
        loss, right, count, valid = sums
        acc = right / max(count, 1)
        return {"val_loss": loss / max(valid, 1), "val_loc_error": 1 - acc}, acc

    def metrics_method(self, test_scale: int) -> str:
        return (
            f"central 224 crop, single scale Q={test_scale}, box of the ground-truth class, "
            "IoU >= 0.5"
        )

    def checkpoint_localization(self) -> dict[str, Any] | None:
        return Localization(regression=self.regression, tuned=self.tune).model_dump(
            mode="json", exclude={"classifier"}
        )


def make_task(opts: TrainOptions) -> ClassificationTask:
    if opts.task == "classification":
        return ClassificationTask()
    if opts.task == "localization":
        return LocalizationTask(opts)
    raise TrainError(f"unknown --task {opts.task!r}; use {' or '.join(TASKS)}")
