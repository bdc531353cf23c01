"""The box encoding shared by training and serving (docs/localization.md, "The box encoding")."""

from __future__ import annotations

import numpy as np
import pytest

from model_store import boxes


def test_encode_is_centre_and_size_relative_to_the_window() -> None:
    # A 112 x 56 box centred in the window at (100, 50): centre (112, 112) - origin, / 224.
    got = boxes.encode([156, 134, 268, 190], origin=[100, 50])
    np.testing.assert_allclose(got, [112 / 224, 112 / 224, 0.5, 0.25])
    np.testing.assert_allclose(boxes.decode(got, origin=[100, 50]), [156, 134, 268, 190])


def test_decode_inverts_encode_on_many_boxes_and_origins() -> None:
    rng = np.random.default_rng(0)
    low = rng.uniform(-50, 400, size=(100, 2))
    box = np.concatenate([low, low + rng.uniform(1, 300, size=(100, 2))], axis=1)
    origin = rng.integers(0, 10, size=(100, 2)) * 32
    np.testing.assert_allclose(boxes.decode(boxes.encode(box, origin), origin), box, atol=1e-9)


def test_a_negative_size_decodes_to_an_empty_box() -> None:
    box = boxes.decode([0.5, 0.5, -0.2, 0.1], origin=[0, 0])
    np.testing.assert_allclose(box, [112, 112 - 11.2, 112, 112 + 11.2])
    assert boxes.area(box) == 0


def test_cell_origins_follow_the_map_geometry() -> None:
    origins = boxes.cell_origins(2, 3)
    assert origins.shape == (2, 3, 2)
    np.testing.assert_array_equal(origins[1, 2], [64, 32])  # cell (i=1, j=2): x = 32 j, y = 32 i
    np.testing.assert_array_equal(origins[0, 0], [0, 0])


def test_mirror_and_clip() -> None:
    np.testing.assert_allclose(boxes.mirror([10, 5, 30, 25], width=100), [70, 5, 90, 25])
    np.testing.assert_allclose(
        boxes.mirror(boxes.mirror([10, 5, 30, 25], 100), 100), [10, 5, 30, 25]
    )
    np.testing.assert_allclose(
        boxes.clip([-5, 10, 120, 300], width=100, height=80), [0, 10, 100, 80]
    )


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching, exclusive ends
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # both empty
    ],
)
def test_iou(a: list, b: list, expected: float) -> None:
    assert boxes.iou(a, b) == pytest.approx(expected)
    assert boxes.iou(b, a) == pytest.approx(expected)


def test_pairwise_iou_shape_and_values() -> None:
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])
    b = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [5, 0, 15, 10]])
    got = boxes.pairwise_iou(a, b)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, [[1, 0, 1 / 3], [1 / 3, 0, 1]])
