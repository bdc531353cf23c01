"""OverFeat's greedy merging with IoU (service/core/merging.py) on hand-made box sets, and against
a plain quadratic-per-step rendering of the rule on random ones."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.merging import MERGE_IOU, class_box, merge_boxes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference(boxes: np.ndarray, weights: np.ndarray, threshold: float = MERGE_IOU):
    """The rule as written: find the closest pair, merge it, start again."""
    clusters = [(np.asarray(b, float), float(w), 1) for b, w in zip(boxes, weights, strict=True)]
    while len(clusters) > 1:
        pairs = [
            (iou(clusters[i][0], clusters[j][0]), i, j)
            for i in range(len(clusters))
            for j in range(i + 1, len(clusters))
        ]
        closest, i, j = max(pairs, key=lambda p: p[0])
        if closest < threshold:
            break
        (bi, wi, ni), (bj, wj, nj) = clusters[i], clusters[j]
        clusters[i] = ((wi * bi + wj * bj) / (wi + wj), wi + wj, ni + nj)
        del clusters[j]
    return clusters


def sorted_rows(boxes: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    order = np.lexsort(boxes.T[::-1])
    return [boxes[order], *(c[order] for c in columns)]


def test_two_clusters_average_their_voters_by_weight() -> None:
    left = np.array([[10, 10, 50, 50], [12, 10, 52, 50], [10, 14, 50, 54]], float)
    right = np.array([[200, 100, 300, 200], [204, 100, 304, 200]], float)
    weights = np.array([0.1, 0.3, 0.2, 0.5, 0.5])
    merged = merge_boxes(np.concatenate([left, right]), weights)
    boxes, w, voters = sorted_rows(merged.boxes, merged.weights, merged.voters)
    np.testing.assert_allclose(boxes[0], (weights[:3, None] * left).sum(0) / 0.6)
    np.testing.assert_allclose(boxes[1], [202, 100, 302, 200])
    np.testing.assert_allclose(w, [0.6, 1.0])
    assert voters.tolist() == [3, 2]
    best = class_box(np.concatenate([left, right]), weights)
    np.testing.assert_allclose(best.box, [202, 100, 302, 200])
    assert best.score == pytest.approx(1.0 / 1.6) and best.voters == 2 and best.clusters == 2


def test_the_heavier_cluster_wins_even_with_fewer_voters() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [100, 100, 110, 110]], float)
    best = class_box(boxes, np.array([0.1, 0.1, 0.5]))
    np.testing.assert_allclose(best.box, [100, 100, 110, 110])
    assert best.score == pytest.approx(0.5 / 0.7)


def test_an_iou_of_exactly_the_threshold_merges_and_just_below_does_not() -> None:
    a = [0.0, 0.0, 10.0, 10.0]
    at = merge_boxes(np.array([a, [0, 0, 10, 20]]), np.array([1.0, 1.0]))
    assert iou(np.array(a), np.array([0, 0, 10, 20])) == 0.5
    assert len(at.weights) == 1
    np.testing.assert_allclose(at.boxes[0], [0, 0, 10, 15])
    below = merge_boxes(np.array([a, [0, 0, 10, 20.01]]), np.array([1.0, 1.0]))
    assert len(below.weights) == 2


def test_one_box_is_its_own_answer_with_all_the_evidence() -> None:
    best = class_box(np.array([[3.0, 4.0, 30.0, 40.0]]), np.array([0.25]))
    np.testing.assert_allclose(best.box, [3, 4, 30, 40])
    assert best.score == 1.0 and best.voters == 1 and best.clusters == 1


def test_identical_boxes_merge_into_one() -> None:
    boxes = np.tile([[5.0, 6.0, 70.0, 80.0]], (7, 1))
    merged = merge_boxes(boxes, np.arange(1, 8) / 10)
    assert len(merged.weights) == 1 and merged.voters[0] == 7
    np.testing.assert_allclose(merged.boxes[0], [5, 6, 70, 80])
    assert merged.weights[0] == pytest.approx(2.8)


def test_the_closest_pair_merges_first() -> None:
    # a-b (IoU 0.54) and b-c (0.75) are both close enough; b and c merge first, and their mean
    # is no longer close enough to a (0.46). Merging a and b first would have swallowed c too.
    a, b, c = np.array([[0, 0, 100, 100], [30, 0, 130, 100], [44, 0, 144, 100]], float)
    assert iou(a, b) > MERGE_IOU and iou(b, c) > iou(a, b) and iou(a, c) < MERGE_IOU
    merged = merge_boxes(np.array([a, b, c]), np.ones(3))
    boxes, w = sorted_rows(merged.boxes, merged.weights)
    np.testing.assert_allclose(boxes, [a, [37, 0, 137, 100]])
    np.testing.assert_allclose(w, [1, 2])


def test_weightless_voters_are_averaged_plainly() -> None:
    merged = merge_boxes(np.array([[0, 0, 10, 10], [0, 0, 10, 12]], float), np.zeros(2))
    np.testing.assert_allclose(merged.boxes[0], [0, 0, 10, 11])
    assert class_box(np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float), np.zeros(2)).score == 0.5


@pytest.mark.parametrize(("seed", "n", "spread"), [(0, 40, 20.0), (1, 60, 60.0), (2, 30, 4.0)])
def test_random_sets_merge_as_the_rule_says(seed: int, n: int, spread: float) -> None:
    rng = np.random.default_rng(seed)
    centre = rng.normal(200, spread, (n, 2))
    size = np.clip(rng.normal(100, spread / 2, (n, 2)), 5, None)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    weights = rng.random(n)
    merged = merge_boxes(boxes, weights)
    want = reference(boxes, weights)
    got_boxes, got_w = sorted_rows(merged.boxes, merged.weights)
    want_boxes, want_w = sorted_rows(np.array([c[0] for c in want]), np.array([c[1] for c in want]))
    np.testing.assert_allclose(got_boxes, want_boxes, atol=1e-9)
    np.testing.assert_allclose(got_w, want_w)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2 boxes but 1 weights"):
        merge_boxes(np.zeros((2, 4)), np.ones(1))
    with pytest.raises(ValueError, match="no boxes"):
        merge_boxes(np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match=">= 0"):
        merge_boxes(np.ones((2, 4)), np.array([1.0, -1.0]))
