"""One split function for grouped, spatial-block and stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from agrifm.data.splits import block_groups, split_fractions, split_parts


def test_groups_stay_on_one_side_and_parts_fill_to_their_fractions() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 200, 1000)
    groups = np.unique(groups, return_inverse=True)[1]
    part = split_parts(groups, (0.7, 0.15, 0.15), seed=3)
    assert all(len(set(part[groups == g])) == 1 for g in np.unique(groups))
    np.testing.assert_allclose(np.bincount(part) / len(part), [0.7, 0.15, 0.15], atol=0.02)
    assert np.array_equal(part, split_parts(groups, (0.7, 0.15, 0.15), seed=3))  # seeded
    assert not np.array_equal(part, split_parts(groups, (0.7, 0.15, 0.15), seed=4))


def test_pinned_outputs() -> None:
    """The greedy rule agrifm used before the split was one function (tables and chips alike)."""
    g = np.array([0, 0, 1, 2, 2, 3, 4, 5, 5, 6])
    assert split_parts(g, (0.6, 0.2, 0.2), seed=1).tolist() == [0, 0, 0, 2, 2, 1, 1, 0, 0, 0]
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0, 0, 1])
    assert split_parts(g, (0.5, 0.5), seed=0, labels=labels).tolist() == [1, 1, 1, 0, 0, 0, 1, 0, 0, 0]


def test_stratified_keeps_class_proportions() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(300), 2)
    labels = np.repeat((rng.random(300) < 0.1).astype(int), 2)  # a rare class: 10 % of groups
    part = split_parts(groups, 0.2, seed=0, labels=labels)
    rare = [labels[part == k].mean() for k in (0, 1)]
    np.testing.assert_allclose(rare, labels.mean(), atol=0.01)


def test_spatial_blocks() -> None:
    rows, cols = np.array([0, 10, 60, 120, 130]), np.array([0, 40, 0, 120, 99])
    assert block_groups(rows, cols, 50).tolist() == [0, 0, 1, 3, 2]
    part = split_parts(block_groups(rows, cols, 50), (0.5, 0.5), seed=0)
    assert part[0] == part[1]


def test_fractions_are_checked() -> None:
    np.testing.assert_allclose(split_fractions(0.25), [0.75, 0.25])
    for bad in ((0.5, 0.6), (1.0,), (-0.1, 1.1)):
        with pytest.raises(ValueError, match="sum to 1"):
            split_fractions(bad)
