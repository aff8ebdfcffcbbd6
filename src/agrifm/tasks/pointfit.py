"""Fit and apply point (pixel time-series) classifiers on in-memory tables.

Shared by ``agrifm demo`` and ``benchmarks/accuracy.py``: one Lightning training path for
the AgriFM point model, with the table's own normalisation statistics, optional Whittaker
smoothing (so smoothed sample libraries and raw scenes meet in one domain) and the
variable-length mode (random season cut-offs while training, for early-season use).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from agrifm.data.tables import OBSERVED, OBSERVED_STATS, SeriesTable
from agrifm.data.timeseries import fill_series
from agrifm.errors import InputError
from agrifm.runtime import die_with_parent, trainer_precision, usable_cores
from agrifm.sensors import Source

__all__ = ["PointFitConfig", "PseudoLabels", "balanced_weights", "prior_logit_bias", "smooth_table", "source_from_table",
           "fit_point_classifier", "predict_table", "pseudo_labelled", "self_trained", "epochs_within", "steps_per_epoch",
           "prior_shift", "prior_correction_bias", "uses_observed"]


@dataclass
class PointFitConfig:
    """Training settings for the point model (defaults tuned for ~1-6k series on 2 CPU cores)."""

    model: dict[str, Any] = field(default_factory=lambda: {
        "preset": "point-small", "embed_dim": 32, "depths": [2, 2, 2], "num_heads": [2, 4, 8],
        "feature_fusion": "attention-cat", "date_encoding": True, "head_dropout": 0.2, "embed_kernel_t": 5})
    # feature_fusion "attention-cat": the whole-season (coarsest) tokens concatenated in season
    # order, as the release fuses time; the finer levels attention-pooled. The model then takes
    # the table's number of frames (num_frames); a cut season is held at its last frame
    # (TableDataset's ``hold``). Single models, 3 seeds, trained without season cuts, OA / mF1
    # (docs/baselines.md): Mato Grosso 0.9705 / 0.9765 (attention pooling everywhere: 0.9705 /
    # 0.9618; every level concatenated: 0.9731 / 0.9764), Slovenia 0.8945 / 0.6019 (0.8965 /
    # 0.5916; 0.8850 / 0.5889).
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    input_noise: float = 0.03
    # Training: blank frames before gap filling (as clouds would) until this share of a series is
    # missing; series already that cloudy are left as they are (TableDataset.drop_frames). Mato
    # Grosso grouped hold-out, 3 seeds: OA 0.966 -> 0.973, mF1 0.968 -> 0.978 (README).
    frame_dropout: float = 0.2
    # Probability that a training batch is cut at a random season fraction (at least min_fraction):
    # the variable-length (early-season) mode, and a regulariser at full season too. Single models,
    # 3 seeds, full-season OA / mF1 with 0.25 vs 0 (docs/baselines.md): Mato Grosso 0.9764 / 0.9824
    # vs 0.9705 / 0.9765, Belgium 0.9724 / 0.9724 vs 0.9514 / 0.9511, Slovenia 0.8892 / 0.5989 vs
    # 0.8945 / 0.6019.
    random_truncation: float = 0.25
    min_fraction: float = 0.25
    # Give the model one more input band, 1 where a frame was observed and 0 where gap filling
    # made it up (SeriesTable.with_observed; frame dropout sets it to 0 too). "auto": where more
    # than GAPPY of the training frames differ from their date's majority (clouds that differ
    # between series); a band that is constant in the data tells only where dropout blanked a
    # frame. Single models, 3 seeds (docs/baselines.md): Slovenia (39 % cloud gaps) OA / mF1
    # 0.8948 / 0.5962 with the band vs 0.8868 / 0.5921 without; forced on where the gaps are the
    # same for every series (Belgium, two missing months) 0.9717 vs 0.9745.
    observed_channel: bool | str = "auto"
    class_balance: float = 0.5  # loss weight of a class ∝ count^-class_balance (0: plain, 1: fully balanced)
    # After training, add prior_correction·class_balance·log(class frequency) to the logits. The
    # loss weights shift the learned posterior by count^-class_balance; a correction of 1 shifts it
    # all the way back (decisions follow the training class frequencies: best OA when the test
    # priors equal the training ones), 0 leaves rare classes over-predicted. 0.8 undoes most of
    # it and leaves rare classes, which weigh a full class in mF1, a small lean: on the held-out
    # tables of the README it was level or better in both OA and mF1 than 1.0 (where these
    # defaults were chosen, so those tables are no longer independent of this setting).
    # True/False are accepted as 1.0/0.0.
    prior_correction: float = 0.8
    ema_decay: float | None = 0.998  # evaluate with an exponential moving average of the weights
    # Self-training, where fit_point_classifier is also given unlabelled series (the series to be
    # classified, a scene's pixels): the first model labels those it predicts with a class
    # probability of at least this, and a second model is trained from scratch on the training
    # plus those series, with as many epochs as the first (at most self_training_steps steps).
    # None: off. Single models, 3 seeds, OA / mF1, self-trained vs supervised (docs/baselines.md,
    # "Self-training, the default"): Mato Grosso 0.9798 / 0.9849 vs 0.9773 / 0.9829, Belgium
    # 0.9775 vs 0.9745, Slovenia 0.8966 / 0.5993 vs 0.8948 / 0.5962; a quarter of Mato Grosso
    # (101 test series) 0.9472 / 0.8146 vs 0.9406 / 0.8431 (one seed lost a rare class). On another
    # CPU (section "The same defaults on a third machine"): the quarter 0.9571 / 0.8571, Belgium
    # 0.9766 vs 0.9738.
    self_training: float | None = 0.9
    self_training_steps: int = 2400
    # Class-balanced pseudo-labels (after CBST, Zou et al. 2018): each class the first model
    # predicts also keeps its most confident series up to the share of all series that reached
    # self_training, so a rare class short of it still gets some. Off: on one machine, 3 seeds,
    # every baseline retrained (docs/baselines.md, "Class-balanced pseudo-labels, tried"), it won
    # back the quarter of Mato Grosso's lost rare class (mF1 0.8146 -> 0.8354; Slovenia 0.5993 ->
    # 0.6124) but cost OA where the added labels were less sure: Mato Grosso 0.9798 / 0.9849 ->
    # 0.9739 / 0.9775 (below the supervised model), Belgium 0.9775 -> 0.9767 (behind L-TAE's
    # 0.9769), the quarter 0.9472 -> 0.9340, NDVI+EVI 0.9663 -> 0.9621 (OA lower on 10 of 12 seeds).
    self_training_balanced: bool = False
    # The class prior the self-trained model decides with: "all", that of the training plus the
    # pseudo-labelled series it learnt from; "labelled", that of the labelled series alone (the
    # pseudo-labels, picked by confidence, over-represent the classes the first model is sure of;
    # prior_shift). "labelled" vs "all", one machine, 3 seeds (docs/baselines.md, "Warm start and
    # the labelled prior, tried"): level within the seed spread (Mato Grosso and stress the same;
    # the quarter 0.9505 / 0.8174 vs 0.9472 / 0.8146, still short; Belgium 0.9781 vs 0.9775;
    # Slovenia 0.8945 / 0.5998 vs 0.8966 / 0.5993; NDVI+EVI 0.9663 / 0.9532 vs 0.9663 / 0.9564),
    # so not the default.
    self_training_prior: str = "all"
    # The second model's initial weights: "scratch" (random, as the first's) or "first" (the first
    # model's, its prior correction taken back out), trained on with the same schedule. "first"
    # (same section): the quarter met (0.9505 / 0.8513) but Belgium lost (0.9743, behind L-TAE's
    # 0.9769) and Mato Grosso fell below the supervised model (0.9756 / 0.9824), so not the default.
    self_training_init: str = "scratch"
    # Train this many models (seeds seed·members + i) and average their class probabilities
    # (models/ensemble.py); ``workers`` processes train them side by side (None: one per core).
    # On 2 cores two members train side by side (one thread each) for about 1.4x the wall time of
    # one; against single models they were within noise or better on the held-out tables
    # (README "Ensembles").
    members: int = 2
    workers: int | None = None
    seed: int = 0
    progress: bool = True
    history_dir: str | None = None  # each member writes history_seed<seed>.csv (per-epoch loss, val metrics) here
    # One intra-op thread: this model's matrices are tiny, and on a busy machine two OpenMP
    # threads wait on each other (measured here: 33 ms vs 2.1 s per step under load).
    num_threads: int | None = 1


def smooth_table(table: SeriesTable, lam: float) -> SeriesTable:
    """Gap-fill then Whittaker-smooth every series over its own length (equal spacing assumed)."""
    from agrifm.data.smoothing import whittaker

    values, _ = fill_series(table.values, table.dates)
    values = values.astype(np.float32)
    if lam > 0:
        for n in np.unique(table.lengths):
            rows = np.flatnonzero(table.lengths == n)
            part = values[rows, :n]
            ok = np.isfinite(part).all(axis=(1, 2))  # series with a band never observed stay as they are
            part[ok] = whittaker(part[ok], lam, axis=1)
            values[rows, :n] = part
    return dataclasses.replace(table, values=values)


def source_from_table(table: SeriesTable, index: np.ndarray, name: str, *, bands: Sequence[str] | None = None,
                      resolution_m: float = 0.0, units: str = "as in the table", base: Source | None = None) -> Source:
    """A source whose normalisation statistics come from the training rows only."""
    bands = list(bands or table.bands)
    cols = [table.bands.index(b) for b in bands]
    x = table.values[np.asarray(index)][..., cols].reshape(-1, len(cols))
    mean = np.nanmean(x, axis=0)
    std = np.maximum(np.nanstd(x, axis=0), 1e-6)
    if base is not None:
        return base.with_stats(mean.tolist(), std.tolist())
    return Source(name=name, bands=tuple(bands), resolution_m=resolution_m, units=units,
                  mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


class _Truncate:
    """Variable-length mode: cut a training batch's series at a random fraction of its season.

    ``hold``: keep the length and repeat the last kept frame instead (models whose temporal
    fusion concatenates frames; what a cut series looks like to them at prediction, see
    :class:`~agrifm.data.datasets.TableDataset`)."""

    def __init__(self, p: float, min_fraction: float, seed: int, hold: bool = False) -> None:
        self.p, self.min_fraction, self.hold = p, min_fraction, hold
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        if self.p <= 0 or self.rng.random() >= self.p:
            return batch
        t = next(iter(batch["inputs"].values())).shape[1]
        k = int(self.rng.integers(max(1, int(np.ceil(self.min_fraction * t))), t + 1))
        batch = dict(batch)
        if self.hold:  # frames after k repeat frame k - 1 (values and date)
            held = torch.minimum(torch.arange(t), torch.tensor(k - 1))
            batch["inputs"] = {s: x[:, held] for s, x in batch["inputs"].items()}
            batch["dates"] = {s: d[:, held] for s, d in batch["dates"].items()}
            return batch
        batch["inputs"] = {s: x[:, :k] for s, x in batch["inputs"].items()}
        batch["dates"] = {s: d[:, :k] for s, d in batch["dates"].items()}
        return batch


def fixed_length(model_config: Any) -> int | None:
    """Frames a model needs every series to have: ``num_frames`` where its temporal fusion
    concatenates frames (``cat``, ``attention-cat``), else None (any length)."""
    from agrifm.models.config import needs_fixed_frames

    return int(model_config.num_frames) if needs_fixed_frames(model_config) else None


def _loader(table: SeriesTable, source: Source, index: np.ndarray, *, train: bool, batch_size: int, seed: int,
            truncate: _Truncate | None = None, drop_frames: float = 0.0, length: int | None = None):
    from torch.utils.data import DataLoader

    from agrifm.data.datasets import TableDataset, collate

    lengths = table.lengths[np.asarray(index)]
    if length is not None:
        if len(lengths) and lengths.max() > length:
            raise InputError(f"table {table.path}: series of up to {int(lengths.max())} frames; this model takes "
                             f"{length} (its temporal fusion concatenates frames)")
        frames, hold = length, length  # shorter series (early season) hold their last value
    else:
        # Series of unequal length (gaps as missing rows) are brought to the longest by repeating frames.
        frames = None if len(lengths) == 0 or (lengths == lengths[0]).all() else int(lengths.max())
        hold = None
    ds = TableDataset(table, source, index, train=train, seed=seed, frames=frames, drop_frames=drop_frames, hold=hold)
    fn = (lambda items: truncate(collate(items))) if truncate is not None else collate
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=train, collate_fn=fn, drop_last=train and len(ds) > batch_size,
                      generator=g)


def fit_point_classifier(table: SeriesTable, train_index: np.ndarray, source: Source, cfg: PointFitConfig,
                         *, unlabelled: SeriesTable | None = None, val_index: np.ndarray | None = None,
                         class_colors: Sequence[Sequence[int]] | None = None, default_root_dir: str | None = None):
    """Train the AgriFM point classifier; returns the fitted :class:`ClassificationTask`.

    With ``cfg.members > 1`` the task's model is an :class:`~agrifm.models.ensemble.Ensemble`
    of independently trained members (each with its own prior correction). Members train in
    spawned processes when ``workers`` allows, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard. With ``unlabelled`` series (on the table's bands) and
    ``cfg.self_training``, the returned model is the self-trained one (:func:`self_trained`)."""
    task = _fit_supervised(table, train_index, source, cfg, val_index=val_index, class_colors=class_colors,
                           default_root_dir=default_root_dir)
    if unlabelled is None or not cfg.self_training:
        return task
    return self_trained(task, table, train_index, source, cfg, unlabelled, class_colors=class_colors,
                        default_root_dir=default_root_dir)[0]


@dataclass
class PseudoLabels:
    """The unlabelled rows a self-trained model learnt from (``index``) and their labels."""

    index: np.ndarray
    labels: np.ndarray
    pool: int  # unlabelled series offered


def pseudo_labelled(probs: np.ndarray, tau: float, balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows whose top class probability is at least ``tau``, and that class.

    ``balanced``: also, for each predicted class, its most confident rows up to the share of all
    rows that reached ``tau`` (rounded up), so every class predicted keeps that share at least."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    keep = conf >= tau
    if balanced and keep.any():
        share = keep.mean()
        for c in np.unique(pred):
            rows = np.flatnonzero(pred == c)
            keep[rows[np.argsort(-conf[rows])][: int(np.ceil(share * len(rows)))]] = True
    index = np.flatnonzero(keep)
    return index, pred[index]


def self_trained(first, table: SeriesTable, train_index: np.ndarray, source: Source, cfg: PointFitConfig,
                 unlabelled: SeriesTable, *, class_colors: Sequence[Sequence[int]] | None = None,
                 default_root_dir: str | None = None) -> tuple[Any, PseudoLabels]:
    """Self-training: ``first`` (fitted on ``train_index``) labels the ``unlabelled`` series it
    predicts with a class probability of at least ``cfg.self_training`` (with
    ``cfg.self_training_balanced``, class-balanced: :func:`pseudo_labelled`); a second model is
    trained from scratch on the training rows plus those, with the first's epochs (at most
    ``cfg.self_training_steps`` steps) and the first's normalisation and observation band.

    The unlabelled series are data the model will classify (their labels, where a table has them,
    are ignored). Pseudo-labels come from whole series: a model for early-season use should be
    self-trained only on series cut as they will be at prediction."""
    tau = float(cfg.self_training or 0.0)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"self_training {cfg.self_training}: expected a class probability in (0, 1]")
    if cfg.self_training_init not in ("scratch", "first"):
        raise ValueError(f"self_training_init {cfg.self_training_init!r}: expected 'scratch' or 'first'")
    if cfg.self_training_prior not in ("all", "labelled"):
        raise ValueError(f"self_training_prior {cfg.self_training_prior!r}: expected 'all' or 'labelled'")
    pool = _on_grid(unlabelled, table)
    keep, labels = pseudo_labelled(predict_table(first, pool, np.arange(len(pool)), source), tau,
                                   balanced=cfg.self_training_balanced)
    pseudo = dataclasses.replace(pool.subset(keep), labels=labels.astype(np.int64))  # pool: the table's classes
    both = table.subset(train_index).concatenated(pseudo)
    # As many passes as the first model made (each labelled series seen as often), at most
    # self_training_steps steps (the time: the pseudo-labelled series can outnumber the labelled).
    second = dataclasses.replace(
        cfg, self_training=None, epochs=epochs_within(len(both), cfg.batch_size, cfg.self_training_steps, cfg.epochs),
        observed_channel=uses_observed(cfg.observed_channel, table, train_index),  # the first's decision
        history_dir=os.path.join(cfg.history_dir, "self_trained") if cfg.history_dir else None)
    labelled = table.labels[np.asarray(train_index)]
    init = _initial_states(first, labelled, cfg) if cfg.self_training_init == "first" else None
    task = _fit_supervised(both, np.arange(len(both)), source, second, class_colors=class_colors,
                           default_root_dir=default_root_dir, init=init)
    if cfg.self_training_prior == "labelled":
        task.add_logit_bias(prior_shift(labelled, both.labels, len(table.class_names)))
    return task, PseudoLabels(index=keep, labels=labels, pool=len(pool))


def _initial_states(first, labels: np.ndarray, cfg: PointFitConfig) -> list[dict[str, torch.Tensor]]:
    """The weights of ``first`` (each member's) without the prior correction _fit_one folded in."""
    import copy

    bias = prior_correction_bias(labels, len(first.class_names), cfg)
    states = []
    for member in getattr(first.model, "members", [first.model]):
        model = copy.deepcopy(member)
        if bias is not None:
            with torch.no_grad():
                model.head.mlp[-1].bias -= torch.as_tensor(bias, dtype=model.head.mlp[-1].bias.dtype)
        states.append(model.state_dict())
    return states


def prior_shift(target: np.ndarray, trained: np.ndarray, num_classes: int) -> list[float]:
    """Logit shift (centred) from the class prior of the labels ``trained`` to that of ``target``:
    the difference of their centred log class counts (:func:`prior_logit_bias` at power 1)."""
    shift = np.subtract(prior_logit_bias(target, num_classes, 1.0), prior_logit_bias(trained, num_classes, 1.0))
    return shift.tolist()


def steps_per_epoch(n: int, batch: int) -> int:
    """Optimiser steps in one pass over ``n`` training series (the last partial batch is dropped)."""
    return max(1, n // batch)


def epochs_within(n: int, batch: int, max_steps: int, max_epochs: int) -> int:
    """Passes over ``n`` series: ``max_epochs`` at most, and no more than fit in ``max_steps`` steps (one at least)."""
    return max(1, min(max_epochs, max_steps // steps_per_epoch(n, batch)))


def _on_grid(unlabelled: SeriesTable, table: SeriesTable) -> SeriesTable:
    """``unlabelled`` on ``table``'s bands, classes and frame grid (shorter series padded)."""
    name = unlabelled.path or "the unlabelled series"
    if tuple(unlabelled.bands) != tuple(table.bands):
        raise InputError(f"{name}: bands {list(unlabelled.bands)}; the model's table has {list(table.bands)}")
    t, have = table.values.shape[1], unlabelled.values.shape[1]
    if have > t:
        if int(unlabelled.lengths.max(initial=0)) > t:
            raise InputError(f"{name}: series of up to {int(unlabelled.lengths.max())} frames; the training "
                             f"table's have {t}")
        unlabelled = dataclasses.replace(unlabelled, values=unlabelled.values[:, :t], dates=unlabelled.dates[:, :t])
    pool = unlabelled.padded(t) if have < t else unlabelled
    return dataclasses.replace(pool, class_names=list(table.class_names), labels=np.zeros(len(pool), np.int64))


def _fit_supervised(table: SeriesTable, train_index: np.ndarray, source: Source, cfg: PointFitConfig,
                    *, val_index: np.ndarray | None = None, class_colors: Sequence[Sequence[int]] | None = None,
                    default_root_dir: str | None = None, init: list[dict[str, torch.Tensor]] | None = None):
    """:func:`fit_point_classifier` on the labelled rows alone (one model or an ensemble); ``init``:
    each member's initial weights."""
    if cfg.members < 1:
        raise ValueError(f"members {cfg.members}: expected at least 1")
    if not 0.0 <= float(cfg.prior_correction) <= 1.0:
        raise ValueError(f"prior_correction {cfg.prior_correction}: expected a fraction in [0, 1]")
    if uses_observed(cfg.observed_channel, table, train_index):
        table, source = _with_observed(table, source, fitting=True)
    args = (table, train_index, source)
    kwargs = dict(val_index=val_index, class_colors=class_colors, default_root_dir=default_root_dir)
    if init is not None and len(init) != cfg.members:
        raise ValueError(f"{len(init)} initial states for {cfg.members} members")
    if cfg.members == 1:
        return _fit_one(*args, cfg, init=init[0] if init else None, **kwargs)
    from agrifm.models.ensemble import Ensemble

    configs = [dataclasses.replace(cfg, members=1, seed=cfg.seed * cfg.members + i, progress=cfg.progress and i == 0)
               for i in range(cfg.members)]
    workers = min(cfg.members, cfg.workers or usable_cores())
    jobs = [(args, c, {**kwargs, "init": init[i] if init else None}) for i, c in enumerate(configs)]
    if workers <= 1:
        states = [_fit_member_state(job) for job in jobs]
    else:
        # Members are independent: one process each (one thread per model is fastest for these
        # small matrices, so side-by-side processes use the cores a single model leaves idle).
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            states = list(pool.map(_fit_member_state, jobs))
    task = _new_task(table, train_index, source, configs[0], class_colors)
    task.model = Ensemble.build(task.model.config, cfg.members)
    for member, state in zip(task.model.members, states):
        member.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return task.eval()


GAPPY = 0.02  # observed_channel "auto": the share of varying gaps from which the band is given


def uses_observed(setting: bool | str, table: SeriesTable, train_index: np.ndarray) -> bool:
    """Whether a fit with ``observed_channel=setting`` gives the model the observation band."""
    if setting == "auto":
        return table.varying_gaps(train_index) > GAPPY
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"observed_channel {setting!r}: expected true, false or 'auto'")


def _with_observed(table: SeriesTable, source: Source, *, fitting: bool = False) -> tuple[SeriesTable, Source]:
    """The table and source with the :data:`~agrifm.data.tables.OBSERVED` band appended; the
    band is 0/1 as it is (``OBSERVED_STATS``), so a table without gaps does not divide by a zero std."""
    if fitting and OBSERVED in table.bands:
        raise InputError(f"table {table.path}: a band is named {OBSERVED!r}, the name of the derived "
                         f"observation band (observed_channel); rename it")
    if OBSERVED not in source.bands:
        source = Source.from_dict({**source.to_dict(), "bands": [*source.bands, OBSERVED],
                                   "mean": [*source.mean, OBSERVED_STATS[0]],
                                   "std": [*source.std, OBSERVED_STATS[1]]})
    return table.with_observed(), source


def _fit_member_state(job: tuple) -> dict[str, np.ndarray]:
    """Process-pool entry point: train one member, return its weights as arrays (plain pickle)."""
    args, cfg, kwargs = job
    task = _fit_one(*args, cfg, **kwargs)
    return {k: v.detach().cpu().numpy() for k, v in task.model.state_dict().items()}


def _new_task(table: SeriesTable, train_index: np.ndarray, source: Source, cfg: PointFitConfig,
              class_colors: Sequence[Sequence[int]] | None):
    from agrifm.tasks.classification import ClassificationTask

    model = dict(cfg.model)
    if "cat" in str(model.get("feature_fusion", "")):
        model.setdefault("num_frames", int(table.values.shape[1]))  # the table's grid: one input width
    return ClassificationTask(
        model=model, sources={source.name: source}, class_names=table.class_names,
        class_colors=[list(c) for c in class_colors] if class_colors else None,
        lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, min_lr=cfg.lr * 0.01,
        label_smoothing=cfg.label_smoothing, input_noise=cfg.input_noise,
        class_weights=balanced_weights(table.labels[np.asarray(train_index)], len(table.class_names), cfg.class_balance),
    )


def _fit_one(table: SeriesTable, train_index: np.ndarray, source: Source, cfg: PointFitConfig,
             *, val_index: np.ndarray | None = None, class_colors: Sequence[Sequence[int]] | None = None,
             default_root_dir: str | None = None, init: dict[str, torch.Tensor] | None = None):
    import logging

    import lightning as L

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = _new_task(table, train_index, source, cfg, class_colors)
    if init is not None:
        task.model.load_state_dict(init)
    length = fixed_length(task.model.config)
    train = _loader(table, source, train_index, train=True, batch_size=cfg.batch_size, seed=cfg.seed,
                    truncate=_Truncate(cfg.random_truncation, cfg.min_fraction, cfg.seed, hold=length is not None),
                    drop_frames=cfg.frame_dropout, length=length)
    val = (_loader(table, source, val_index, train=False, batch_size=256, seed=cfg.seed, length=length)
           if val_index is not None else None)
    from agrifm.progress import lightning_progress
    from agrifm.tasks.plots import History

    bar, lines = lightning_progress(cfg.progress, "train")
    if cfg.history_dir:
        lines.append(History(os.path.join(cfg.history_dir, f"history_seed{cfg.seed}.csv")))
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=bar, enable_model_summary=False, deterministic=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=max(1, cfg.epochs // 4), default_root_dir=default_root_dir,
        precision=trainer_precision(),
        callbacks=_callbacks(cfg) + lines,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*val_dataloader.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        trainer.fit(task, train, val)
    bias = prior_correction_bias(table.labels[np.asarray(train_index)], len(table.class_names), cfg)
    if bias is not None:
        task.add_logit_bias(bias)
    return task.eval()


def prior_correction_bias(labels: np.ndarray, num_classes: int, cfg: PointFitConfig) -> list[float] | None:
    """The logit bias a model fitted on ``labels`` gets after training (``cfg.prior_correction``
    of the class weighting undone); None where either setting is off."""
    if float(cfg.prior_correction) <= 0 or cfg.class_balance <= 0:
        return None
    return prior_logit_bias(labels, num_classes, float(cfg.prior_correction) * cfg.class_balance)


def prior_logit_bias(labels: np.ndarray, num_classes: int, power: float) -> list[float]:
    """``-log`` of :func:`balanced_weights`, centred: undoes the weighting at decision time.

    Cross-entropy weighted by ``w_c`` is minimised by ``p(c|x)·w_c`` (normalised); adding
    ``-log w_c = power·log(count_c) + const`` to the logits restores ``p(c|x)``.
    """
    w = balanced_weights(labels, num_classes, power)
    if w is None:
        return [0.0] * num_classes
    log = -np.log(w)
    return (log - log.mean()).tolist()


def balanced_weights(labels: np.ndarray, num_classes: int, power: float) -> list[float] | None:
    """Cross-entropy weights ∝ count^-power, scaled so the average sample weight stays 1.

    Rare crops otherwise weigh little in the loss but a full class in mF1."""
    if power <= 0:
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.maximum(counts, 1.0) ** -power
    w *= counts.sum() / max((w * counts).sum(), 1e-12)
    return w.tolist()


def _callbacks(cfg: PointFitConfig) -> list:
    if not cfg.ema_decay:
        return []
    from lightning.pytorch.callbacks import EMAWeightAveraging

    # Start after warm-up: averaging the random initial weights in only slows convergence.
    return [EMAWeightAveraging(decay=cfg.ema_decay, update_starting_at_step=cfg.warmup_steps)]


@torch.no_grad()
def predict_table(task, table: SeriesTable, index: np.ndarray, source: Source, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (N, K) for the rows ``index``."""
    task.eval()
    fitted = next(iter(task.sources_meta.values()))
    if OBSERVED in fitted.bands and OBSERVED not in source.bands:  # a model fitted with observed_channel
        table, source = _with_observed(table, source)
    out = []
    for batch in _loader(table, source, np.asarray(index), train=False, batch_size=batch_size, seed=0,
                         length=fixed_length(task.model.config)):
        out.append(task.model(batch["inputs"], batch["dates"]).softmax(1))
    return torch.cat(out).numpy()
