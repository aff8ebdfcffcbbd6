"""Tiling: windows cover the scene, weights blend to 1, blocks reproduce a whole-scene pass."""

from __future__ import annotations

import numpy as np
import pytest

from agrifm.predict.tiling import Accumulator, Rect, TileGrid, blend_weights, ramp, ring, window_starts


@pytest.mark.parametrize("length", [1, 31, 32, 33, 100, 257])
def test_window_starts_cover_the_axis(length: int) -> None:
    starts = window_starts(length, 32, 8)
    assert starts[0] == 0 and (np.diff(starts) == 24).all()
    assert starts[-1] + 32 >= length and (starts < length).all()
    assert len(starts) == 1 or starts[-2] + 32 < length  # no superfluous window


def test_ramp_is_a_positive_partition_of_unity() -> None:
    w = ramp(32, 8)
    assert (w > 0).all() and w.max() == 1
    np.testing.assert_allclose(w[24:] + w[:8], 1, atol=1e-6)  # right end of one + left end of the next
    assert (ramp(16, 0) == 1).all()
    np.testing.assert_allclose(blend_weights(32, 8), np.outer(w, w))


@pytest.mark.parametrize("window, overlap", [(0, 0), (8, 5), (8, -1)])
def test_bad_window_overlap(window: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="window|overlap"):
        window_starts(10, window, overlap)


def test_ring_partitions_outer_minus_inner() -> None:
    outer, inner = Rect(0, 0, 10, 12), Rect(3, 2, 10, 9)
    count = np.zeros((10, 12), int)
    for r in ring(outer, inner):
        count[r.row0:r.row1, r.col0:r.col1] += 1
    expect = np.ones((10, 12), int)
    expect[3:10, 2:9] = 0
    assert (count == expect).all()
    assert ring(outer, Rect(5, 5, 5, 5)) == [outer]  # empty core: everything is spill


def _tile_probs(tile, k: int = 3) -> np.ndarray:
    """Deterministic pseudo-random probabilities per window (what a model would return)."""
    rng = np.random.default_rng(tile.row * 7919 + tile.col)
    p = rng.random((k, tile.size, tile.size)).astype(np.float32)
    return p / p.sum(0)


@pytest.mark.parametrize("shape, window, overlap, block", [
    ((100, 100), 32, 8, 48), ((100, 77), 32, 8, 24), ((50, 48), 32, 8, 2048),
    ((20, 15), 32, 8, 24), ((130, 90), 16, 8, 16), ((61, 64), 16, 0, 32),
])
def test_blocks_reproduce_whole_scene_blend(shape: tuple[int, int], window: int, overlap: int, block: int) -> None:
    """Each block runs only its own windows; core + neighbours' spill equals one global pass."""
    h, w = shape
    tg = TileGrid(h, w, window, overlap, block)
    weights = blend_weights(window, overlap)
    full = Accumulator(tg.scene, 3, weights)
    owners = {}
    for b in tg.blocks:
        for t in tg.tiles(b):
            assert t not in owners, "a window belongs to one block"
            owners[t] = b.index
            full.add(t, _tile_probs(t), np.ones((window, window), bool))
    assert len(owners) == tg.num_tiles
    assert (full.den > 0).all(), "every pixel has a positive weight"
    cover = np.zeros(shape, int)
    for b in tg.blocks:
        cover[b.rect.row0:b.rect.row1, b.rect.col0:b.rect.col1] += 1
    assert (cover == 1).all(), "blocks partition the scene"

    saved = {}
    for b in tg.blocks:  # what the engine stores per block
        acc = Accumulator(tg.footprint(b), 3, weights)
        for t in tg.tiles(b):
            acc.add(t, _tile_probs(t), np.ones((window, window), bool))
        core = tg.core(b)
        saved[b.index] = (core, acc.result(core), [acc.partial(r) for r in ring(acc.rect, core)])
    want, _ = full.result()
    for b in tg.blocks:  # what assembly does
        acc = Accumulator(b.rect, 3, weights)
        for nb in tg.neighbours(b):
            for part in saved[nb.index][2]:
                acc.add_partial(part)
        got, valid = acc.result()
        core, (core_p, _), _ = saved[b.index]
        rows, cols = b.rect.slices(core)
        got[:, rows, cols] = core_p
        valid[rows, cols] = True
        assert valid.all()
        np.testing.assert_allclose(got, want[:, b.rect.row0:b.rect.row1, b.rect.col0:b.rect.col1], atol=1e-6)


def test_block_size_is_a_multiple_of_the_stride() -> None:
    tg = TileGrid(5000, 5000, 256, 32, 2048)
    assert tg.block_size % tg.stride == 0 and tg.block_size == 2016
    assert sum(len(tg.tiles(b)) for b in tg.blocks) == tg.num_tiles  # no window computed twice
