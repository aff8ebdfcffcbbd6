"""Train/validation/test splits that keep groups of items on one side: one function for every
variant - grouped (same place, same series), spatial blocks (neighbouring chips or points) and
stratified (class proportions kept as far as groups allow).

Why not scikit-learn's group splitters: ``GroupShuffleSplit`` sizes its parts by the number of
groups, not of items, and makes two parts; ``StratifiedGroupKFold`` makes ``k`` equal folds. A
split here takes any number of parts of any item fractions (``0.7 / 0.15 / 0.15``), so it fills
parts greedily instead: groups in a seeded random order, each to the part furthest below its
share of items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["split_parts", "block_groups", "split_fractions"]


def split_fractions(fractions: float | Sequence[float]) -> np.ndarray:
    """Part fractions as an array; a float ``f`` means ``(1 - f, f)``. ValueError unless they
    are >= 0, at least two, and sum to 1."""
    f = np.array([1.0 - fractions, fractions] if np.isscalar(fractions) else fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) < 2 or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    return f


def block_groups(rows: np.ndarray, cols: np.ndarray, block: int) -> np.ndarray:
    """Group id per item: the ``block`` x ``block`` px cell of the grid its (row, col) lies in."""
    cells = np.stack([np.asarray(rows) // block, np.asarray(cols) // block], axis=1)
    return np.unique(cells, axis=0, return_inverse=True)[1].ravel()


def split_parts(groups: np.ndarray, fractions: float | Sequence[float], *, seed: int = 0,
                labels: np.ndarray | None = None) -> np.ndarray:
    """Part index (``0..P-1``) per item; items with the same group id are never on two sides.

    ``groups``: group id per item, ``0..G-1`` (e.g. :func:`agrifm.data.tables.group_ids`, or
    :func:`block_groups` for spatial blocks). ``fractions``: each part's share of the items (see
    :func:`split_fractions`). With ``labels`` (per item) the split is stratified: groups are
    dealt separately per stratum, the majority label of the group (ties: the smallest label).
    Within a stratum, groups are shuffled with ``seed`` and each goes to the part furthest
    below its target.
    """
    frac = split_fractions(fractions)
    groups = np.asarray(groups)
    sizes = np.bincount(groups)
    if labels is None:
        stratum = np.zeros(len(sizes), dtype=np.int64)
    else:  # majority label of each group
        classes = np.unique(labels, return_inverse=True)[1].ravel()
        votes = np.zeros((len(sizes), classes.max() + 1), dtype=np.int64)
        np.add.at(votes, (groups, classes), 1)
        stratum = votes.argmax(axis=1)
    part = np.empty(len(sizes), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for s in np.unique(stratum):
        members = rng.permutation(np.flatnonzero(stratum == s))
        target = frac * sizes[members].sum()
        filled = np.zeros(len(frac))
        for g in members:
            k = int(np.argmax(target - filled))
            part[g] = k
            filled[k] += sizes[g]
    return part[groups]
