"""Training and batched prediction for the pixel time-series baselines
(:mod:`agrifm.models.baselines`): a minimal, seeded PyTorch loop on in-memory samples.

Plain PyTorch rather than Lightning: the baselines train in seconds on ``(N, T, C)`` arrays, and
their published recipes (optimiser, schedule, noise, early-season cuts) are reproduced exactly;
the Lightning tasks serve the foundation model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["predict_logits", "train_torch_classifier"]


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG ``fork_rng`` must save/restore (none for CPU training)."""
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def _call(model: nn.Module, x: Tensor, days: Tensor | None, mask: Tensor | None) -> Tensor:
    """``model(x)``, adding ``days=`` / ``mask=`` only where given (plain modules take just x)."""
    kw = {k: v for k, v in (("days", days), ("mask", mask)) if v is not None}
    return model(x, **kw)


def _frame_mask(lengths: Tensor | None, t: int) -> Tensor | None:
    return None if lengths is None else torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


@torch.no_grad()
def predict_logits(
    model: nn.Module, X: np.ndarray | Tensor, *, batch_size: int = 4096, device: str | torch.device = "cpu",
    days: np.ndarray | Tensor | None = None, lengths: np.ndarray | Tensor | None = None,
) -> Tensor:
    """Logits of ``model`` on ``X`` in eval mode and mini-batches; returned on CPU.

    ``days (N, T)`` (acquisition day positions, :func:`~agrifm.models.baselines.day_positions`)
    and ``lengths (N,)`` (frames observed from the start; later ones become ``mask=False``) are
    passed on to models that take them (:class:`~agrifm.models.baselines.LTAE`). The module's
    train/eval mode is restored afterwards, so this is safe inside a training loop.
    """
    device = torch.device(device)
    x = torch.as_tensor(X, dtype=torch.float32)
    d = None if days is None else torch.as_tensor(days, dtype=torch.float32)
    n = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            raise ValueError("predict_logits got 0 samples")
        out = []
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            mask = _frame_mask(None if n is None else n[sl].to(device), x.shape[1])
            out.append(_call(model, x[sl].to(device), None if d is None else d[sl].to(device), mask).float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def _truncate_batch(x: Tensor, lengths: Tensor, rng: torch.Generator, min_fraction: float) -> tuple[Tensor, Tensor]:
    """Early-season augmentation: cut the batch at one random frame k in [ceil(min_fraction·T), T],
    as AgriFM's variable-length mode does; frames from k on hold the value of frame k-1 (what
    ``fill_series`` gives a cut series) and leave the mask."""
    t = x.shape[1]
    k = int(torch.randint(max(1, math.ceil(min_fraction * t)), t + 1, (1,), generator=rng))
    if k < t:
        x = torch.cat([x[:, :k], x[:, k - 1 : k].expand(-1, t - k, *x.shape[2:])], dim=1)
        lengths = lengths.clamp(max=k)
    return x, lengths


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
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
    optimizer: Literal["adamw", "adam"] = "adamw",
    days: np.ndarray | Tensor | None = None,
    random_truncation: float = 0.0,
    min_fraction: float = 0.25,
    progress: bool = True,
) -> nn.Module:
    """Train a classifier on in-memory samples with AdamW (or Adam) and a per-step LR schedule.

    ``X_train`` must already be normalised and gap-free (NaN/inf raise), e.g. ``(N, T, C)`` float32;
    ``y_train`` int labels with ``-1`` ignored. ``augment_noise`` adds Gaussian noise of that std
    (in normalised units) to each training batch. ``days (N, T)`` are passed to the model as
    ``days=`` (:class:`~agrifm.models.baselines.LTAE`). ``random_truncation``: the probability that
    a batch is cut at a random point of the season (at least ``min_fraction`` of it;
    :func:`_truncate_batch`), the early-season training AgriFM gets; models are then called with
    ``mask=``. Batch order, dropout, cuts and noise are seeded from ``seed`` inside a forked RNG, so
    results repeat on CPU without disturbing the caller's random state (initial weights are the
    caller's: seed before building the model). A tqdm bar shows the epoch loss and, with
    ``val=(X, y)``, the validation OA. Raises ``FloatingPointError`` naming epoch and batch if the loss stops
    being finite. Returns the model (in eval mode, on ``device``).
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs>=1, batch_size>=1, lr>0; got {epochs=}, {batch_size=}, {lr=}")
    if schedule not in ("onecycle", "cosine", "constant"):
        raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")
    if optimizer not in ("adamw", "adam"):
        raise ValueError(f"optimizer must be 'adamw' or 'adam', got {optimizer!r}")
    if not 0.0 <= random_truncation <= 1.0:
        raise ValueError(f"random_truncation must be a probability, got {random_truncation}")
    from tqdm.auto import tqdm

    device = torch.device(device)
    x, y = _check_xy(X_train, y_train, "train")
    xv, yv = _check_xy(*val, "val") if val is not None else (None, None)
    d = None if days is None else torch.as_tensor(days, dtype=torch.float32).to(device)
    if d is not None and d.shape != x.shape[:2]:
        raise ValueError(f"train: days must be (N, T) = {tuple(x.shape[:2])}, got {tuple(d.shape)}")
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 training samples (BatchNorm), got {n}")
    # A trailing batch of one sample would break BatchNorm in train mode: drop it (order is reshuffled anyway).
    n_batches = math.ceil(n / batch_size)
    if n_batches > 1 and n % batch_size == 1:
        n_batches -= 1

    model.to(device)
    x, y = x.to(device), y.to(device)
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * n_batches
    sched: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
        if schedule == "onecycle"
        else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    )
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=label_smoothing)

    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        cuts = torch.Generator().manual_seed(seed + 7919)
        bar = tqdm(range(epochs), desc=type(model).__name__, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            perm = torch.randperm(n).to(device)
            running, seen = 0.0, 0
            for b in range(n_batches):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                mask = None
                if random_truncation > 0 and float(torch.rand(1, generator=cuts)) < random_truncation:
                    xb, lengths = _truncate_batch(xb, torch.full((len(idx),), x.shape[1], device=device), cuts, min_fraction)
                    mask = _frame_mask(lengths, x.shape[1])
                if augment_noise > 0:
                    xb = xb + augment_noise * torch.randn_like(xb)
                loss = loss_fn(_call(model, xb, None if d is None else d[idx], mask), yb)
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
            if xv is not None and d is None:
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
