"""Scene tiling: overlapping model windows, blending weights and output blocks.

The scene (the output grid, ``height x width`` pixels) is covered by one *global* grid of
square windows with stride ``window - overlap``; windows at the bottom/right edges extend
past the scene (their reads are padded). Each pixel's probabilities are the weighted mean
of every window covering it, with a separable raised-cosine ramp over the overlap: the
weights of two neighbouring windows sum to 1 there, so tiles blend without seams, and the
ramp never reaches 0, so pixels at scene edges (seen by one window's ramp only) keep a
positive weight.

Memory is bounded by cutting the scene into *blocks* (a multiple of the stride). A block
runs the windows that *start* in it, once each; their weighted sums cover the block plus an
``overlap``-wide spill to the bottom/right. Pixels that no other block's window reaches (the
block's *core*) are final at once; the rest (a ring of rectangles, ``overlap`` wide) is kept
as partial sums and completed at assembly by adding the neighbours' spill. The result is
exactly that of one whole-scene pass, whatever the block size or the split across ranks,
and no window is computed twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from agrifm.errors import InputError

__all__ = ["Rect", "Tile", "Block", "TileGrid", "Accumulator", "Partial", "window_starts", "ramp",
           "blend_weights", "ring"]


@dataclass(frozen=True)
class Rect:
    """Half-open pixel rectangle ``[row0, row1) x [col0, col1)`` of the output grid."""

    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def height(self) -> int:
        return max(0, self.row1 - self.row0)

    @property
    def width(self) -> int:
        return max(0, self.col1 - self.col0)

    @property
    def empty(self) -> bool:
        return self.height == 0 or self.width == 0

    def intersect(self, other: "Rect") -> "Rect":
        return Rect(max(self.row0, other.row0), max(self.col0, other.col0),
                    min(self.row1, other.row1), min(self.col1, other.col1))

    def slices(self, inner: "Rect") -> tuple[slice, slice]:
        """Slices of ``inner`` in an array that spans ``self``."""
        return (slice(inner.row0 - self.row0, inner.row1 - self.row0),
                slice(inner.col0 - self.col0, inner.col1 - self.col0))


@dataclass(frozen=True)
class Tile:
    """One model window in output-grid pixels; may extend past the scene (padded read)."""

    row: int
    col: int
    size: int

    @property
    def rect(self) -> Rect:
        return Rect(self.row, self.col, self.row + self.size, self.col + self.size)


@dataclass(frozen=True)
class Block:
    """One rectangle of the output grid, computed and stored as a unit; ``(bi, bj)`` its place."""

    index: int
    bi: int
    bj: int
    rect: Rect


def window_starts(length: int, window: int, overlap: int) -> np.ndarray:
    """Offsets of the windows covering ``[0, length)``: 0, stride, 2*stride... until covered."""
    _check_window(window, overlap)
    if length < 1:
        raise InputError(f"cannot tile an axis of length {length}")
    stride = window - overlap
    n = 1 if length <= window else math.ceil((length - window) / stride) + 1
    return np.arange(n, dtype=np.int64) * stride


def ramp(window: int, overlap: int) -> np.ndarray:
    """1-D weights: raised cosine over ``overlap`` pixels at both ends, 1 in between.

    ``w[i] + w[i + stride] == 1`` across an overlap (partition of unity) and ``w > 0``.
    """
    _check_window(window, overlap)
    w = np.ones(window, dtype=np.float64)
    if overlap:
        up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = up
        w[window - overlap:] = up[::-1]
    return w.astype(np.float32)


def blend_weights(window: int, overlap: int) -> np.ndarray:
    """2-D separable blending weights ``(window, window)``, float32, all positive."""
    r = ramp(window, overlap)
    return np.outer(r, r)


def _check_window(window: int, overlap: int) -> None:
    if window < 1:
        raise InputError(f"window must be at least 1 pixel, got {window}")
    if not 0 <= 2 * overlap <= window:
        raise InputError(f"overlap must be in [0, window/2] = [0, {window // 2}], got {overlap}")


def ring(outer: Rect, inner: Rect) -> list[Rect]:
    """``outer`` minus ``inner`` (inside it) as up to four non-empty rectangles."""
    parts = [
        Rect(outer.row0, outer.col0, inner.row0, outer.col1),  # top
        Rect(inner.row1, outer.col0, outer.row1, outer.col1),  # bottom
        Rect(inner.row0, outer.col0, inner.row1, inner.col0),  # left
        Rect(inner.row0, inner.col1, inner.row1, outer.col1),  # right
    ]
    if inner.empty:
        return [outer] if not outer.empty else []
    return [p for p in parts if not p.empty]


@dataclass(frozen=True)
class TileGrid:
    """The windows and blocks of one scene (``block`` is rounded to a multiple of the stride)."""

    height: int
    width: int
    window: int
    overlap: int
    block: int = 2048

    def __post_init__(self) -> None:
        _check_window(self.window, self.overlap)
        if self.height < 1 or self.width < 1:
            raise InputError(f"empty output grid {self.height}x{self.width}")
        if self.block < 1:
            raise InputError(f"block size must be positive, got {self.block}")

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    @property
    def block_size(self) -> int:
        """Block side: a multiple of the stride, so block edges fall on window starts."""
        return max(1, round(self.block / self.stride)) * self.stride

    @property
    def scene(self) -> Rect:
        return Rect(0, 0, self.height, self.width)

    @cached_property
    def row_starts(self) -> np.ndarray:
        return window_starts(self.height, self.window, self.overlap)

    @cached_property
    def col_starts(self) -> np.ndarray:
        return window_starts(self.width, self.window, self.overlap)

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        """All blocks, row-major; together they partition the scene exactly."""
        b, out = self.block_size, []
        for bi, r in enumerate(range(0, self.height, b)):
            for bj, c in enumerate(range(0, self.width, b)):
                out.append(Block(len(out), bi, bj, Rect(r, c, min(r + b, self.height), min(c + b, self.width))))
        return tuple(out)

    @property
    def num_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def tiles(self, block: Block) -> list[Tile]:
        """The windows that start in ``block`` (each window belongs to exactly one block)."""
        b = block.rect
        rows = self.row_starts[(self.row_starts >= b.row0) & (self.row_starts < b.row1)]
        cols = self.col_starts[(self.col_starts >= b.col0) & (self.col_starts < b.col1)]
        return [Tile(int(i), int(j), self.window) for i in rows for j in cols]

    def footprint(self, block: Block) -> Rect:
        """Pixels the block's windows touch, plus the block itself, inside the scene."""
        tiles = self.tiles(block)
        r1 = max([block.rect.row1] + [t.row + t.size for t in tiles])
        c1 = max([block.rect.col1] + [t.col + t.size for t in tiles])
        return Rect(block.rect.row0, block.rect.col0, r1, c1).intersect(self.scene)

    def core(self, block: Block) -> Rect:
        """Pixels of the block that no window of another block reaches: final after the block."""
        def first_free(starts: np.ndarray, lo: int) -> int:
            before = starts[starts < lo]
            return max(lo, int(before.max()) + self.window) if before.size else lo

        r = block.rect
        return Rect(first_free(self.row_starts, r.row0), first_free(self.col_starts, r.col0), r.row1, r.col1)

    def neighbours(self, block: Block) -> list[Block]:
        """Blocks whose windows may spill into ``block``: itself, above, left, above-left."""
        per_row = math.ceil(self.width / self.block_size)
        return [self.blocks[i * per_row + j]
                for i in (block.bi - 1, block.bi) for j in (block.bj - 1, block.bj) if i >= 0 and j >= 0]


@dataclass
class Partial:
    """Unnormalised weighted sums over a rectangle: ``num (K, h, w)``, ``den``, ``valid (h, w)``."""

    rect: Rect
    num: np.ndarray
    den: np.ndarray
    valid: np.ndarray


class Accumulator:
    """Weighted sums of window probabilities over a rectangle of the output grid.

    ``weights`` (:func:`blend_weights`) are needed to :meth:`add` windows, not to merge partials.
    """

    def __init__(self, rect: Rect, num_classes: int, weights: np.ndarray | None = None) -> None:
        self.rect = rect
        self.weights = weights
        self.num = np.zeros((num_classes, rect.height, rect.width), dtype=np.float32)
        self.den = np.zeros((rect.height, rect.width), dtype=np.float32)
        self.valid = np.zeros((rect.height, rect.width), dtype=bool)

    def add(self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray) -> None:
        """Blend one window: ``probs (K, size, size)``, or None when the model was skipped."""
        part = tile.rect.intersect(self.rect)
        if part.empty:
            return
        tsl, asl = tile.rect.slices(part), self.rect.slices(part)
        self.valid[asl] |= valid[tsl]
        if probs is not None:
            if self.weights is None:
                raise ValueError("Accumulator.add needs blending weights")
            w = self.weights[tsl]
            self.num[(slice(None), *asl)] += probs[(slice(None), *tsl)] * w
            self.den[asl] += w

    def add_partial(self, p: Partial) -> None:
        """Add another block's spill (sums over ``p.rect``) where it overlaps."""
        part = p.rect.intersect(self.rect)
        if part.empty:
            return
        psl, asl = p.rect.slices(part), self.rect.slices(part)
        self.num[(slice(None), *asl)] += p.num[(slice(None), *psl)]
        self.den[asl] += p.den[psl]
        self.valid[asl] |= p.valid[psl]

    def partial(self, rect: Rect) -> Partial:
        sl = self.rect.slices(rect)
        return Partial(rect, self.num[(slice(None), *sl)].copy(), self.den[sl].copy(), self.valid[sl].copy())

    def result(self, rect: Rect | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities (K, h, w), valid (h, w))`` over ``rect``; invalid pixels are 0."""
        sl = self.rect.slices(rect or self.rect)
        num, den = self.num[(slice(None), *sl)], self.den[sl]
        valid = self.valid[sl] & (den > 0)
        probs = np.divide(num, den, out=np.zeros_like(num), where=valid[None])
        return probs, valid
