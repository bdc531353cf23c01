"""``verydeep transfer``: linear SVMs on VGG descriptors, as paper Appendix B evaluates them
(docs/evaluation.md, "Transfer").

The descriptors of two ``.npz`` files written by ``verydeep features`` (``features`` ``(N, D)``,
``labels``) train one-vs-rest linear SVMs (scikit-learn's ``LinearSVC``) on the first and are
scored on the second: accuracy, and average precision per class (each class's SVM score ranking
the test images) with its mean, mAP, the figure of the paper's VOC tables. C is chosen by
stratified cross-validation on the training set (mean accuracy). No torch: importing this module
costs nothing until the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
MAX_FOLDS = 5


class TransferError(ValueError):
    """The feature files cannot be used as given; the message says why."""


@dataclass(frozen=True)
class TransferResult:
    classes: list[str]
    c: float
    cv_accuracy: float
    accuracy: float
    average_precision: dict[str, float]
    train_images: int
    test_images: int

    @property
    def mean_average_precision(self) -> float:
        return float(np.mean(list(self.average_precision.values())))

    def as_json(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "C": self.c,
            "cv_accuracy": self.cv_accuracy,
            "accuracy": self.accuracy,
            "mean_average_precision": self.mean_average_precision,
            "average_precision": self.average_precision,
            "train_images": self.train_images,
            "test_images": self.test_images,
        }


def load(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "labels" not in data:
                raise TransferError(
                    f"{path} has no labels: extract it from a <class>/<image> folder"
                )
            return data["features"].astype(np.float64), data["labels"].astype(str)
    except (OSError, KeyError, ValueError) as err:
        if isinstance(err, TransferError):
            raise
        raise TransferError(f"{path}: not a features file of verydeep features ({err})") from None


def transfer(train: str | Path, test: str | Path, *, seed: int = 0) -> TransferResult:
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    x_train, y_train = load(train)
    x_test, y_test = load(test)
    if x_train.shape[1] != x_test.shape[1]:
        raise TransferError(
            f"the descriptors differ in length: {x_train.shape[1]} (train) and "
            f"{x_test.shape[1]} (test); extract both with the same model, scales and pool"
        )
    classes = sorted(set(y_train))
    unknown = sorted(set(y_test) - set(classes))
    if len(classes) < 2 or unknown:
        raise TransferError(
            f"the training set needs two classes or more, and every test class: "
            f"train has {classes}, test also has {unknown}"
        )
    folds = min(MAX_FOLDS, min(int(np.sum(y_train == c)) for c in classes))
    if folds < 2:
        raise TransferError("cross-validation needs at least 2 training images of every class")
    search = GridSearchCV(
        LinearSVC(dual="auto", max_iter=20_000),
        {"C": list(C_GRID)},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    search.fit(x_train, y_train)
    svm = search.best_estimator_
    scores = svm.decision_function(x_test)
    if scores.ndim == 1:  # two classes: one score, for the second
        scores = np.stack([-scores, scores], axis=1)
    order = [list(svm.classes_).index(c) for c in classes]
    ap = {
        c: float(average_precision_score(y_test == c, scores[:, order[k]]))
        for k, c in enumerate(classes)
        if np.any(y_test == c)
    }
    return TransferResult(
        classes=classes,
        c=float(search.best_params_["C"]),
        cv_accuracy=float(search.best_score_),
        accuracy=float(np.mean(svm.predict(x_test) == y_test)),
        average_precision=ap,
        train_images=len(y_train),
        test_images=len(y_test),
    )


def format_table(result: TransferResult) -> str:
    width = max(len(c) for c in [*result.classes, "mean (mAP)"])
    lines = [f"{'class':<{width}}  AP (%)", f"{'-' * width}  ------"]
    lines += [f"{c:<{width}}  {100 * ap:6.1f}" for c, ap in result.average_precision.items()]
    lines.append(f"{'mean (mAP)':<{width}}  {100 * result.mean_average_precision:6.1f}")
    lines.append(
        f"accuracy {100 * result.accuracy:.1f}% on {result.test_images} test images; C = "
        f"{result.c:g} (cross-validated accuracy {100 * result.cv_accuracy:.1f}% on "
        f"{result.train_images} training images)"
    )
    return "\n".join(lines)


def register(commands: Any) -> None:
    p = commands.add_parser(
        "transfer",
        help="linear SVMs on two feature files: accuracy and mean average precision",
        description="Train one-vs-rest linear SVMs (C by cross-validation) on the descriptors "
        "of --train and score them on --test, as paper Appendix B does.",
    )
    p.add_argument("--train", required=True, help="features of the training images (.npz)")
    p.add_argument("--test", required=True, help="features of the test images (.npz)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    p.add_argument("--seed", type=int, default=0, help="of the folds (default: %(default)s)")
    p.set_defaults(handler=_transfer)


def _transfer(args: argparse.Namespace) -> int:
    try:
        result = transfer(args.train, args.test, seed=args.seed)
    except TransferError as err:
        print(f"verydeep transfer: error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.as_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
