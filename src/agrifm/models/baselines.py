"""Pixel time-series baselines: TempCNN, L-TAE, the pooled CNN, Random Forest, and the recipes
they are trained with.

These give reference accuracies for AgriFM on per-pixel series ``(N, T, C)`` (e.g. the
Mato Grosso MOD13Q1 samples). They are deliberately small and dependency-light:
scikit-learn is imported only when the Random Forest is used. Their training loop and batched
prediction live in :mod:`agrifm.tasks.baseline_training` (models hold no training logic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agrifm.data.timeseries import fill_series

__all__ = [
    "TempCNN",
    "PooledTemporalCNN",
    "LTAE",
    "RandomForestBaseline",
    "day_positions",
    "TEMPCNN_RECIPE",
    "POOLED_RECIPE",
    "LTAE_RECIPE",
]


def _flat_pixels(x: Tensor, in_channels: int, name: str) -> Tensor:
    """``(B, T, C)`` or a 1x1-pixel AgriFM batch ``(B, T, C, 1, 1)`` -> ``(B, T, C)``; checks C."""
    if x.ndim == 5 and x.shape[-2:] == (1, 1):
        x = x.flatten(2)
    if x.ndim != 3 or x.shape[2] != in_channels:
        raise ValueError(f"{name} expects (B, T, {in_channels}) or (B, T, {in_channels}, 1, 1), got {tuple(x.shape)}")
    return x


def _conv_blocks(in_channels: int, hidden: int, kernel: int, layers: int, dropout: float) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [
            nn.Conv1d(in_channels if i == 0 else hidden, hidden, kernel, padding="same", bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        ]
    return nn.Sequential(*blocks)


class TempCNN(nn.Module):
    """TempCNN as published: Pelletier, Webb & Petitjean (2019), "Temporal Convolutional Neural
    Network for the Classification of Satellite Image Time Series", Remote Sensing 11(5):523
    (authors' code: github.com/charlotte-pel/temporalCNN, ``Archi_3CONV64_1FC256``).

    Three blocks of [Conv1d over time, 64 filters, kernel 5, "same" padding; BatchNorm; ReLU;
    Dropout], **flatten** (so each date keeps its own weights: the model is tied to ``frames``),
    one dense layer of 256 units + BatchNorm + ReLU + Dropout, and a softmax layer (here: logits,
    the softmax sits in the loss). Dropout 0.2 as in the issue's reference runs (the authors' code
    uses 0.5 in its architecture sweeps). The paper's training recipe is Adam (lr 1e-3), batch 32,
    a small L2 penalty (1e-6); :data:`TEMPCNN_RECIPE` holds the settings ``accuracy.py`` uses.

    Input ``(B, T, C)`` or ``(B, T, C, 1, 1)`` with ``T == frames``; output logits ``(B, K)``.
    Shorter series (early season) must be brought to ``frames`` first (``fill_series`` holds
    the last value); ``days``/``mask`` are accepted and ignored, so all baselines share one call.
    """

    def __init__(self, in_channels: int, num_classes: int, frames: int, hidden: int = 64, kernel: int = 5,
                 layers: int = 3, fc: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        if min(in_channels, frames, hidden, kernel, layers, fc) < 1 or num_classes < 2:
            raise ValueError(f"TempCNN needs in_channels, frames, hidden, kernel, layers, fc >= 1 and num_classes >= 2; "
                             f"got {in_channels=}, {num_classes=}, {frames=}, {hidden=}, {kernel=}, {layers=}, {fc=}")
        self.in_channels, self.frames = in_channels, frames
        self.encoder = _conv_blocks(in_channels, hidden, kernel, layers, dropout)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden * frames, fc, bias=False),
            nn.BatchNorm1d(fc),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )

    def forward(self, x: Tensor, days: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        x = _flat_pixels(x, self.in_channels, "TempCNN")
        if x.shape[1] != self.frames:
            raise ValueError(f"TempCNN was built for {self.frames} frames (flatten layer), got {x.shape[1]}")
        return self.head(self.encoder(x.transpose(1, 2)))


# The published recipe as accuracy.py trains it (Pelletier et al. 2019: Adam lr 1e-3, batch 32,
# L2 1e-6 ~ weight decay 2e-6 on Adam; ~60 epochs with light Gaussian input noise, as in the
# issue's reference runs; constant learning rate).
TEMPCNN_RECIPE = dict(epochs=60, batch_size=32, lr=1e-3, weight_decay=2e-6, optimizer="adam", schedule="constant",
                      augment_noise=0.03)


class PooledTemporalCNN(nn.Module):
    """The project's TempCNN **variant** (not the published model): TempCNN's three conv blocks,
    but global average **and** max pooling over time instead of the paper's flatten, so one model
    accepts any series length; then a dense layer of 4 x ``hidden`` units and the classifier.
    Reported as its own row (``temporal_cnn_pooled``); the published model is :class:`TempCNN`.

    Input ``(B, T, C)`` or ``(B, T, C, 1, 1)``; output logits ``(B, K)``.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 64, kernel: int = 5, layers: int = 3,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or hidden < 1 or kernel < 1 or layers < 1:
            raise ValueError(
                f"PooledTemporalCNN needs in_channels>=1, num_classes>=2, hidden>=1, kernel>=1, layers>=1; got "
                f"{in_channels=}, {num_classes=}, {hidden=}, {kernel=}, {layers=}"
            )
        self.in_channels = in_channels
        self.encoder = _conv_blocks(in_channels, hidden, kernel, layers, dropout)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, 4 * hidden, bias=False),
            nn.BatchNorm1d(4 * hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden, num_classes),
        )

    def forward(self, x: Tensor, days: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = self.encoder(_flat_pixels(x, self.in_channels, "PooledTemporalCNN").transpose(1, 2))  # (B, hidden, T)
        return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


POOLED_RECIPE = dict(epochs=60, batch_size=64, lr=1e-3, weight_decay=1e-4, optimizer="adamw", schedule="onecycle",
                     augment_noise=0.03)


def _sinusoid(days: Tensor, dim: int, period: float) -> Tensor:
    """Transformer sinusoids of ``days (B, T)`` -> ``(B, T, dim)``: angle ``d / period^(2i/dim)``."""
    i = torch.arange(dim, device=days.device)
    freq = period ** (-(2 * (i // 2)).float() / dim)
    angle = days.float()[..., None] * freq
    return torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))


def _mlp(dims: Sequence[int], last_plain: bool = False) -> nn.Sequential:
    """Linear + BatchNorm + ReLU per step of ``dims``; ``last_plain``: the last step is a bare Linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if not (last_plain and i == len(dims) - 2):
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class LTAE(nn.Module):
    """L-TAE: Garnot & Landrieu (2020), "Lightweight Temporal Self-Attention for Classifying
    Satellite Images Time Series" (AALTD, arXiv:2007.00586; reference code
    github.com/VSainteuf/lightweight-temporal-attention-pytorch), on per-pixel series.

    With the paper's defaults: each date's C values go through a small per-date MLP (``input_mlp``;
    the paper's pixel-set encoder reduced to one pixel: Linear+BatchNorm+ReLU to 32, 64), a layer
    norm, a 1x1 projection to ``d_model`` = 256 with a layer norm, plus a sinusoidal positional
    encoding of the **acquisition day** (period ``T`` = 1000, one table of ``d_model / n_head``
    repeated per head). Then ``n_head`` = 16 heads, each with one learnt master query of
    ``d_k`` = 8 and keys from a linear map of the sequence, attend over the dates (temperature
    sqrt(d_k), attention dropout 0.1); each head pools its own ``d_model / n_head`` channel group;
    the concatenated heads go through MLP [256, 128] (Linear+BatchNorm+ReLU), dropout 0.2 and a
    layer norm; the decoder MLP [128, 64, 32, K] gives the logits. The paper trains with Adam
    (lr 1e-3), batch 128, 100 epochs and a focal loss with gamma 1 (:data:`LTAE_RECIPE`; here
    cross-entropy, which focal loss with gamma 0 is).

    Differences from the reference code, for per-pixel tables of any length: the layer norm after
    the projection normalises each date over its channels (the code's spans a fixed sequence
    length), and ``mask (B, T)`` (True = observed) keeps frames past a series' end (early season,
    padding) out of the attention.

    ``forward(x (B, T, C) or (B, T, C, 1, 1), days (B, T) day positions, mask (B, T) bool)`` ->
    logits ``(B, K)``; ``days=None`` uses the frame index (the code's "order" positions).
    """

    def __init__(self, in_channels: int, num_classes: int, *, input_mlp: Sequence[int] = (32, 64), n_head: int = 16,
                 d_k: int = 8, d_model: int = 256, mlp: Sequence[int] = (256, 128), dropout: float = 0.2,
                 period: float = 1000.0, decoder: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or d_model % n_head or mlp[0] != d_model:
            raise ValueError(f"LTAE needs in_channels>=1, num_classes>=2, d_model divisible by n_head and mlp[0] == "
                             f"d_model; got {in_channels=}, {num_classes=}, {d_model=}, {n_head=}, {mlp=}")
        self.in_channels, self.n_head, self.d_k, self.d_model, self.period = in_channels, n_head, d_k, d_model, period
        self.input_mlp = _mlp([in_channels, *input_mlp])
        width = input_mlp[-1] if input_mlp else in_channels
        self.in_norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, d_model)  # the reference code's 1x1 Conv1d
        self.proj_norm = nn.LayerNorm(d_model)
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.key = nn.Linear(d_model, n_head * d_k)
        nn.init.normal_(self.key.weight, 0.0, math.sqrt(2.0 / d_k))
        self.attn_dropout = nn.Dropout(0.1)
        self.mlp = _mlp(list(mlp))
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(mlp[-1])
        self.decoder = _mlp([mlp[-1], *decoder, num_classes], last_plain=True)

    def forward(self, x: Tensor, days: Tensor | None = None, mask: Tensor | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        x = _flat_pixels(x, self.in_channels, "LTAE")
        b, t, c = x.shape
        h = self.input_mlp(x.reshape(b * t, c)).reshape(b, t, -1)
        h = self.proj_norm(self.proj(self.in_norm(h)))
        if days is None:
            days = torch.arange(1, t + 1, device=x.device).expand(b, t)
        if days.shape != (b, t):
            raise ValueError(f"LTAE: days must be (B, T) = {(b, t)}, got {tuple(days.shape)}")
        h = h + _sinusoid(days, self.d_model // self.n_head, self.period).repeat(1, 1, self.n_head)
        k = self.key(h).reshape(b, t, self.n_head, self.d_k)
        scores = torch.einsum("hd,bthd->bht", self.query, k) / math.sqrt(self.d_k)
        if mask is not None:
            if mask.shape != (b, t):
                raise ValueError(f"LTAE: mask must be (B, T) = {(b, t)}, got {tuple(mask.shape)}")
            scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        attn = self.attn_dropout(scores.softmax(dim=-1))  # (B, heads, T)
        v = h.reshape(b, t, self.n_head, self.d_model // self.n_head)
        pooled = torch.einsum("bht,bthd->bhd", attn, v).reshape(b, self.d_model)  # heads concatenated
        logits = self.decoder(self.out_norm(self.dropout(self.mlp(pooled))))
        return (logits, attn) if return_attention else logits


LTAE_RECIPE = dict(epochs=100, batch_size=128, lr=1e-3, weight_decay=0.0, optimizer="adam", schedule="constant",
                   augment_noise=0.0)


def day_positions(dates: np.ndarray) -> np.ndarray:
    """``dates (N, T)`` datetime64 -> float32 day positions for :class:`LTAE`: days since 1 January
    of the year of each series' first date (day of year for one-season series, counting on past
    the year's end for longer ones). Missing dates (NaT: padding, early-season cut) repeat the
    last known position (those frames are masked anyway)."""
    d = np.asarray(dates).astype("datetime64[D]")
    if d.ndim != 2:
        raise ValueError(f"dates must be (N, T), got shape {d.shape}")
    ok = ~np.isnat(d)
    first = np.where(ok.any(1), d[np.arange(len(d)), ok.argmax(1)], np.datetime64("2000-01-01"))
    jan1 = first.astype("datetime64[Y]").astype("datetime64[D]")
    days = (d - jan1[:, None]).astype("timedelta64[D]").astype(np.float64)
    days[~ok] = np.nan
    # hold the last known position over missing ones (then the first known one before the start)
    idx = np.where(ok, np.arange(d.shape[1])[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    days = np.take_along_axis(days, idx, axis=1)
    return np.nan_to_num(days, nan=0.0).astype(np.float32)


def _as_series(x: Any, name: str = "X") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, T, C) pixel time series, got shape {arr.shape}")
    return arr


class RandomForestBaseline:
    """scikit-learn Random Forest on flattened per-pixel series ``(N, T*C)``.

    The forest cannot take NaN, so gaps (NaN/inf) get the project's treatment
    (:func:`agrifm.data.timeseries.fill_series`: linear interpolation in time, nearest value at
    the ends, frames equally spaced); a series with no valid value gets the training band mean.
    Gap-free input passes through unchanged. Labels equal to ``-1`` (ignore) are dropped.
    """

    def __init__(self, n_estimators: int = 300, seed: int = 0, n_jobs: int = -1, **rf_kwargs: Any) -> None:
        self.n_estimators, self.seed, self.n_jobs, self.rf_kwargs = n_estimators, seed, n_jobs, rf_kwargs
        self.model: Any = None
        self.band_mean_: np.ndarray | None = None
        self.shape_: tuple[int, int] | None = None

    @property
    def classes_(self) -> np.ndarray:
        """Labels seen in training, in the column order of :meth:`predict_proba`."""
        self._check_fitted()
        return self.model.classes_

    def _check_fitted(self) -> None:
        if self.model is None:
            raise RuntimeError("RandomForestBaseline is not fitted; call fit(X, y) first")

    def _features(self, x: np.ndarray) -> np.ndarray:
        assert self.band_mean_ is not None
        filled, _ = fill_series(x)  # never-observed series stay NaN -> band mean
        filled = np.where(np.isnan(filled), self.band_mean_, filled)
        return filled.reshape(len(x), -1)

    def fit(self, X: np.ndarray, y: np.ndarray) -> RandomForestBaseline:
        from sklearn.ensemble import RandomForestClassifier

        x = _as_series(X)
        y = np.asarray(y).astype(np.int64).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"X has {len(x)} samples but y has {len(y)}")
        keep = y != -1
        x, y = x[keep], y[keep]
        if len(y) == 0:
            raise ValueError("no labelled sample to fit (all labels are -1)")
        finite = np.isfinite(x)
        empty = np.flatnonzero(~finite.any(axis=(0, 1)))
        if empty.size:
            raise ValueError(f"band index(es) {empty.tolist()} have no valid value in the training data")
        self.band_mean_ = np.nanmean(np.where(finite, x, np.nan), axis=(0, 1)).astype(np.float32)
        self.shape_ = (x.shape[1], x.shape[2])
        self.model = RandomForestClassifier(
            n_estimators=self.n_estimators, random_state=self.seed, n_jobs=self.n_jobs, **self.rf_kwargs
        ).fit(self._features(x), y)
        return self

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        x = _as_series(X)
        if x.shape[1:] != self.shape_:
            raise ValueError(f"X has (T, C) = {x.shape[1:]} but the forest was fitted on {self.shape_}")
        return self._features(x)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class labels ``(N,)`` int64."""
        features = self._prepare(X)
        return self.model.predict(features).astype(np.int64)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, len(classes_))``; columns follow :attr:`classes_`."""
        features = self._prepare(X)
        return self.model.predict_proba(features)
