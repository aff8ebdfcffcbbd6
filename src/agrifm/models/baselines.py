"""Pixel time-series baselines: TempCNN, Random Forest and a minimal PyTorch training loop.

These give reference accuracies for AgriFM on per-pixel series ``(N, T, C)`` (e.g. the
Mato Grosso MOD13Q1 samples). They are deliberately small and dependency-light:
scikit-learn is imported only when the Random Forest is used, and the training loop is plain
PyTorch (the Lightning task elsewhere serves the foundation model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from agrifm.data.timeseries import fill_series

__all__ = [
    "TemporalCNN",
    "RandomForestBaseline",
    "train_torch_classifier",
    "predict_logits",
]


class TemporalCNN(nn.Module):
    """TempCNN (Pelletier et al., 2019, Remote Sensing 11(5):523) for pixel time series.

    ``layers`` blocks of Conv1d over time + BatchNorm + ReLU + Dropout, then a dense layer
    (4 x ``hidden`` units, as the paper's 256 for ``hidden=64``) and the classifier. Unlike the
    paper's flatten, the temporal features are reduced by global average **and** max pooling, so
    one model accepts any series length T (e.g. missing dates, other seasons) while the max
    branch keeps short phenological peaks that a plain mean would wash out.

    Input ``(B, T, C)`` or ``(B, T, C, 1, 1)`` (a 1x1-pixel AgriFM batch); output logits ``(B, K)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 64,
        kernel: int = 5,
        layers: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or hidden < 1 or kernel < 1 or layers < 1:
            raise ValueError(
                f"TemporalCNN needs in_channels>=1, num_classes>=2, hidden>=1, kernel>=1, layers>=1; got "
                f"{in_channels=}, {num_classes=}, {hidden=}, {kernel=}, {layers=}"
            )
        self.in_channels = in_channels
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [
                nn.Conv1d(in_channels if i == 0 else hidden, hidden, kernel, padding="same", bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            ]
        self.encoder = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, 4 * hidden, bias=False),
            nn.BatchNorm1d(4 * hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 5 and x.shape[-2:] == (1, 1):
            x = x.flatten(2)
        if x.ndim != 3 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"TemporalCNN expects (B, T, {self.in_channels}) or (B, T, {self.in_channels}, 1, 1), "
                f"got {tuple(x.shape)}"
            )
        h = self.encoder(x.transpose(1, 2))  # (B, hidden, T)
        return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


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


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG ``fork_rng`` must save/restore (none for CPU training)."""
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


@torch.no_grad()
def predict_logits(
    model: nn.Module, X: np.ndarray | Tensor, *, batch_size: int = 4096, device: str | torch.device = "cpu"
) -> Tensor:
    """Logits of ``model`` on ``X`` in eval mode and mini-batches; returned on CPU.

    The module's train/eval mode is restored afterwards, so this is safe inside a training loop.
    """
    device = torch.device(device)
    x = torch.as_tensor(X, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            raise ValueError("predict_logits got 0 samples")
        return torch.cat([model(xb.to(device)).float().cpu() for xb in x.split(batch_size)])
    finally:
        model.train(was_training)


def train_torch_classifier(
    model: nn.Module,
    X_train: np.ndarray | Tensor,
    y_train: np.ndarray | Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: str | torch.device = "cpu",
    val: tuple[np.ndarray | Tensor, np.ndarray | Tensor] | None = None,
    augment_noise: float = 0.0,
    label_smoothing: float = 0.0,
    schedule: Literal["onecycle", "cosine"] = "onecycle",
    progress: bool = True,
) -> nn.Module:
    """Train a classifier on in-memory samples with AdamW and a per-step LR schedule.

    ``X_train`` must already be normalised and gap-free (NaN/inf raise), e.g. ``(N, T, C)``
    float32; ``y_train`` int labels with ``-1`` ignored. ``augment_noise`` adds Gaussian noise of
    that std (in normalised units) to each training batch. Batch order, dropout and noise are
    seeded from ``seed`` inside a forked RNG, so results repeat on CPU without disturbing the
    caller's random state (initial weights are the caller's: seed before building the model).
    A tqdm bar shows the epoch loss and, with ``val=(X, y)``, the validation OA. Raises
    ``FloatingPointError`` naming epoch and batch if the loss stops being finite. Returns the
    model (in eval mode, on ``device``).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs>=1, batch_size>=1, lr>0; got {epochs=}, {batch_size=}, {lr=}")
    if schedule not in ("onecycle", "cosine"):
        raise ValueError(f"schedule must be 'onecycle' or 'cosine', got {schedule!r}")
    from tqdm.auto import tqdm

    device = torch.device(device)
    x, y = _check_xy(X_train, y_train, "train")
    xv, yv = _check_xy(*val, "val") if val is not None else (None, None)
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 training samples (BatchNorm), got {n}")
    # A trailing batch of one sample would break BatchNorm in train mode: drop it (order is reshuffled anyway).
    n_batches = math.ceil(n / batch_size)
    if n_batches > 1 and n % batch_size == 1:
        n_batches -= 1

    model.to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * n_batches
    sched: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
        if schedule == "onecycle"
        else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    )
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=label_smoothing)

    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        bar = tqdm(range(epochs), desc=type(model).__name__, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            perm = torch.randperm(n).to(device)
            running, seen = 0.0, 0
            for b in range(n_batches):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                if augment_noise > 0:
                    xb = xb + augment_noise * torch.randn_like(xb)
                loss = loss_fn(model(xb), yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss.item()} at epoch {epoch}, batch {b} "
                        f"(lr={sched.get_last_lr()[0]:.3g}); check inputs for NaN/inf or lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.item() * len(idx)
                seen += len(idx)
            post = {"loss": f"{running / seen:.4f}"}
            if xv is not None:
                post["val_oa"] = f"{_oa(predict_logits(model, xv, batch_size=4 * batch_size, device=device), yv):.4f}"
            bar.set_postfix(post)
        bar.close()
    return model.eval()


def _oa(logits: Tensor, y: Tensor) -> float:
    """Overall accuracy over labelled samples (``y != -1``); the quick figure for the progress bar."""
    keep = y != -1
    return float((logits.argmax(1)[keep] == y[keep]).float().mean()) if keep.any() else math.nan


def _check_xy(X: np.ndarray | Tensor, y: np.ndarray | Tensor | Sequence[int], split: str) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(X, dtype=torch.float32)
    t = torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)
    if len(x) != len(t):
        raise ValueError(f"{split}: X has {len(x)} samples but y has {len(t)}")
    if not torch.isfinite(x).all():
        bad = torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(1)).flatten()[:5].tolist()
        raise ValueError(f"{split}: X holds NaN/inf (first samples {bad}); fill gaps first (agrifm.data.timeseries.fill_series)")
    return x, t
