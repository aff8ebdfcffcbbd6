#!/usr/bin/env python
"""AgriFM vs classic baselines on labelled pixel time series, same split, several seeds.

    python benchmarks/accuracy.py --train TRAIN.csv --test TEST.csv [--seeds 3] [--json OUT]
    python benchmarks/accuracy.py --train TABLE.csv --holdout 0.3 ...   (grouped split of one table)
    ... --plot OUT.png          (bars per model with their spread, and the early-season curve)
    ... --set lr=0.002 --set model.embed_dim=48   (override AgriFM's PointFitConfig defaults)
    ... --corrections 1.0,0.5   (also score the same AgriFM models with other prior corrections)

TABLE: long CSV/Parquet with ``sample_id``, ``label``, ``date`` and one numeric column per band
(any names, any count, gaps allowed). Single models against single models, every figure the
mean over seeds with its standard deviation:

- ``agrifm``: the AgriFM point classifier (``PointFitConfig`` defaults, variable-length mode),
  one model;
- ``random_forest``: 300 trees on the flattened, gap-filled series;
- ``temporal_cnn``: TempCNN as published (Pelletier et al. 2019; ``TEMPCNN_RECIPE``);
- ``ltae``: L-TAE with the paper's defaults and day-of-acquisition positions (``LTAE_RECIPE``);
- extra row ``temporal_cnn_pooled``: the project's pooled TempCNN variant.

``--members M`` (M > 1) adds an ensemble row per model (``agrifm_ensemble``,
``random_forest_ensemble``, ...: M models of seeds ``s·M + i`` whose class probabilities are
averaged); the single-model rows are then member 0 of each. AgriFM trains at least
``--agrifm-steps`` steps per seed, 25 epochs on tables large enough for that to be more, up to
``--agrifm-max-steps`` (``agrifm_step_budget``); the JSON's ``setup`` says how many it took.

Early season: every model is trained for it the same way as AgriFM (a quarter of the training
batches cut at a random point of the season, at least a quarter of it; the forest gets truncated
copies of a third of its rows, so a quarter of its training set is cut), and scored with each
test series cut after 1/4, 1/2, 3/4 and all of its frames (``early_season[model][fraction]``).
The cut series are gap-filled as all series are (the last value held to the end of the grid);
L-TAE also masks the frames past the cut. AgriFM's recipe already holds these cuts, so one AgriFM
model gives its row and its curve; the baselines' rows come from models trained by their own
recipes (no cuts: the cut copies cost the forest 0.02 OA on Mato Grosso), their curves from a
second model of each trained with the cuts (so a baseline's "1" point may differ from its row).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from agrifm.data.tables import grouped_split, read_table  # noqa: E402
from agrifm.data.timeseries import fill_series  # noqa: E402
from agrifm.io import write_text_atomic  # noqa: E402
from agrifm.tasks.metrics import metrics_from_confusion  # noqa: E402
from agrifm.tasks.pointfit import (  # noqa: E402
    PointFitConfig, fit_point_classifier, predict_table, prior_logit_bias, source_from_table,
)

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
T = TypeVar("T")
LABELS = {"agrifm": "AgriFM", "random_forest": "Random Forest", "temporal_cnn": "TempCNN", "ltae": "L-TAE",
          "temporal_cnn_pooled": "pooled CNN"}
SINGLE = ("agrifm", "random_forest", "temporal_cnn", "ltae")  # the four rows every table reports


def _scores(y: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, float]:
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    m = metrics_from_confusion(cm, names)
    return {"oa": m["oa"], "mf1": m["mf1"], "kappa": m["kappa"]}


def _normalised(values: np.ndarray, dates: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    filled, _ = fill_series(values, dates)
    z = (filled - mean) / std
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _steps_per_epoch(n: int, batch: int) -> int:
    return max(1, n // batch)  # training drops the last partial batch


def _steps_epochs(n: int, batch: int, max_steps: int, max_epochs: int) -> int:
    return max(1, min(max_epochs, max_steps // _steps_per_epoch(n, batch)))


REFERENCE_FRAMES = 23  # the series length the ceiling is sized for (~6,000 x 23 tables in 30 min on 2 cores)


def agrifm_step_budget(n: int, frames: int, batch: int, floor: int, ceiling: int, epochs: int = 25) -> int:
    """AgriFM's training steps per seed: at least ``floor``, enough for ``epochs`` passes over a
    larger table, at most ``ceiling``. The ceiling shrinks in proportion for series longer than
    ``REFERENCE_FRAMES`` (a step's time grows with the dates) but never below the floor.

    Small tables get many passes within the floor; a table of 6,000 series gets 25 passes rather
    than 12 (stress table, 3 seeds: OA 0.9722 -> 0.9747, README)."""
    cap = max(floor, int(ceiling * min(1.0, REFERENCE_FRAMES / max(frames, 1))))
    return min(cap, max(floor, epochs * _steps_per_epoch(n, batch)))


def parse_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs -> PointFitConfig overrides; ``model.KEY`` goes into the model dict.

    Values are parsed as JSON where they can be (``0.002``, ``[2, 2]``, ``true``), else kept as text."""
    fields = {f.name for f in dataclasses.fields(PointFitConfig)} - {"seed", "progress"}
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key.startswith("model."):
            out.setdefault("model", {})[key[6:]] = value
        elif key in fields:
            out[key] = value
        else:
            raise SystemExit(f"--set {pair!r}: unknown setting {key!r}; settings: {sorted(fields)} or model.<key>")
    return out


def _config(seed: int, quiet: bool, overrides: dict) -> PointFitConfig:
    over = dict(overrides)
    model = over.pop("model", {})
    cfg = PointFitConfig(seed=seed, progress=not quiet, **{"random_truncation": 0.25, **over})
    cfg.model.update(model)
    return cfg


def rescored(task, cfg: PointFitConfig, y_train: np.ndarray, correction: float, score: Callable[[Any], T]) -> T:
    """``score(task)`` with the models' prior correction changed to ``correction``, then restored.

    The correction is a constant per class added to every member's logits after training, so the
    same trained members stand for any correction (no retraining)."""
    k = len(task.class_names)
    delta = (np.asarray(prior_logit_bias(y_train, k, correction * cfg.class_balance))
             - np.asarray(prior_logit_bias(y_train, k, float(cfg.prior_correction) * cfg.class_balance)))
    task.add_logit_bias(delta.tolist())
    try:
        return score(task)
    finally:
        task.add_logit_bias((-delta).tolist())


@contextlib.contextmanager
def _member0(task):
    """Within the block, ``task`` is its ensemble's first member alone (unchanged for one model)."""
    members = getattr(task.model, "members", None)
    if members is None:
        yield task
        return
    whole = task.model
    task.model = members[0]
    try:
        yield task
    finally:
        task.model = whole


def _truncated_copies(x: np.ndarray, share: float, min_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to append to ``x`` (gap-filled, (N, T, C)) for the forest's early-season training, so
    that ``share`` of the training set is cut (AgriFM's share of cut batches): copies of random
    rows, each cut at a random frame (>= ``min_fraction`` of T) and held. Returns (rows, their
    indices into x)."""
    rng = np.random.default_rng(seed)
    n, t, _ = x.shape
    count = int(round(n * share / (1.0 - share))) if share < 1 else n
    pick = rng.choice(n, min(count, n), replace=False)
    k = rng.integers(max(1, int(np.ceil(min_fraction * t))), t + 1, len(pick))
    out = x[pick].copy()
    frame = np.arange(t)[None, :]
    held = np.minimum(frame, k[:, None] - 1)
    return np.take_along_axis(out, held[..., None].repeat(out.shape[2], axis=2), axis=1), pick


def run(train_path: str, test_path: str | None, holdout: float, seeds: int, agrifm_steps: int, quiet: bool,
        overrides: dict | None = None, corrections: list[float] | None = None,
        agrifm_max_steps: int | None = None, members: int = 1) -> dict:
    from agrifm.models.baselines import (
        LTAE, LTAE_RECIPE, POOLED_RECIPE, TEMPCNN_RECIPE, PooledTemporalCNN, RandomForestBaseline, TempCNN,
        day_positions,
    )
    from agrifm.tasks.baseline_training import predict_logits, train_torch_classifier

    if members < 1:
        raise SystemExit(f"--members {members}: expected at least 1")
    train = read_table(train_path)
    if test_path:
        test = read_table(test_path, bands=list(train.bands))
        # A held-out region may hold a class the training table lacks: every model gets it
        # wrong (counted as errors), rather than the benchmark stopping.
        unseen = [c for c in test.class_names if c not in train.class_names]
        if unseen:
            n = int(np.isin(test.labels, [test.class_names.index(c) for c in unseen]).sum())
            print(f"warning: {n} test series have class(es) {unseen} absent from the training table; "
                  f"no model can predict them", flush=True)
        names = list(train.class_names) + unseen
        train, test = train.with_classes(names), test.with_classes(names)
        tr_idx, te_idx = np.arange(len(train)), None
    else:
        tr_idx, te_idx = grouped_split(train, holdout, seed=0)
        test = train
    te_idx = np.arange(len(test)) if te_idx is None else te_idx
    # One frame grid for both sides (tables may differ in length): pad to the longer one.
    t = max(train.values.shape[1], test.values.shape[1])
    train, test = train.padded(t), test.padded(t)
    names = train.class_names
    k = len(names)
    y_tr, y_te = train.labels[tr_idx], test.labels[te_idx]
    source = source_from_table(train, tr_idx, "table")
    mean, std = np.asarray(source.mean, np.float32), np.asarray(source.std, np.float32)
    x_tr = _normalised(train.values[tr_idx], train.dates[tr_idx], mean, std)
    d_tr = day_positions(train.dates[tr_idx])
    cut = {f: test.truncated(f).padded(t) for f in FRACTIONS}  # early season: each test series cut
    x_te = {f: _normalised(c.values[te_idx], c.dates[te_idx], mean, std) for f, c in cut.items()}
    n_te = {f: c.lengths[te_idx] for f, c in cut.items()}
    d_te = day_positions(test.dates[te_idx])  # the calendar of the full grid (frames past a cut are masked)
    print(f"train {train_path}: {len(tr_idx)} series; test {test_path or f'grouped hold-out {holdout:.0%}'}: "
          f"{len(te_idx)} series; {k} classes; bands {list(train.bands)}; {t} dates", flush=True)

    rows = list(LABELS) + ([f"{m}_ensemble" for m in LABELS] if members > 1 else [])
    curve: dict[str, dict[float, list[dict]]] = {m: {f: [] for f in FRACTIONS} for m in rows}  # early-season training
    full: dict[str, dict[float, list[dict]]] = {m: {1.0: []} for m in rows}  # each model's own recipe
    other: dict[float, list[dict]] = {c: [] for c in corrections or []}
    ceiling = 2 * agrifm_steps if agrifm_max_steps is None else agrifm_max_steps
    probe = _config(0, quiet, overrides or {})
    trunc = dict(random_truncation=probe.random_truncation, min_fraction=probe.min_fraction)

    def record(into: dict[str, dict[float, list[dict]]], name: str, probs: dict[float, list[np.ndarray]],
               ensemble: dict[float, np.ndarray] | None = None) -> None:
        """Score member 0 as the single model and, with several members, their mean probability (or
        ``ensemble``'s) as the ensemble."""
        for f, p in probs.items():
            into[name][f].append(_scores(y_te, p[0].argmax(1), names))
            if members > 1:
                mean_p = ensemble[f] if ensemble is not None else np.mean(p, axis=0)
                into[f"{name}_ensemble"][f].append(_scores(y_te, mean_p.argmax(1), names))

    def torch_probs(build: Callable[[], Any], recipe: dict, seed: int, dated: bool, early: bool) -> dict[float, list[np.ndarray]]:
        fractions = FRACTIONS if early else (1.0,)
        out: dict[float, list[np.ndarray]] = {f: [] for f in fractions}
        for i in range(members):
            torch.manual_seed(seed * members + i)
            model = build()
            train_torch_classifier(model, x_tr, y_tr, seed=seed * members + i, progress=not quiet,
                                   days=d_tr if dated else None, **{**recipe, **(trunc if early else {})})
            for f in fractions:
                logits = predict_logits(model, x_te[f], days=d_te if dated else None, lengths=n_te[f] if dated else None)
                out[f].append(logits.softmax(1).numpy())
        return out

    def forest_probs(seed: int, early: bool) -> dict[float, list[np.ndarray]]:
        fractions = FRACTIONS if early else (1.0,)
        out: dict[float, list[np.ndarray]] = {f: [] for f in fractions}
        for i in range(members):
            s = seed * members + i
            x, y = x_tr, y_tr
            if early:
                extra, pick = _truncated_copies(x_tr, trunc["random_truncation"], trunc["min_fraction"], s)
                x, y = np.concatenate([x_tr, extra]), np.concatenate([y_tr, y_tr[pick]])
            rf = RandomForestBaseline(n_estimators=300, seed=s).fit(x, y)
            for f in fractions:
                p = np.zeros((len(te_idx), k))
                p[:, rf.classes_] = rf.predict_proba(x_te[f])
                out[f].append(p)
        return out

    times: dict[str, float] = {m: 0.0 for m in LABELS}
    for seed in range(seeds):
        clock = time.time()
        cfg = _config(seed, quiet, overrides or {})
        cfg.members = members
        budget = agrifm_step_budget(len(tr_idx), t, cfg.batch_size, agrifm_steps, ceiling)
        cfg.epochs = _steps_epochs(len(tr_idx), cfg.batch_size, budget, 200)
        task = fit_point_classifier(train, tr_idx, source, cfg)
        with _member0(task) as single:
            alone = {f: [predict_table(single, cut[f], te_idx, source)] for f in FRACTIONS}
            for c in other:
                other[c].append(rescored(single, cfg, y_tr, c, lambda tk: _scores(
                    y_te, predict_table(tk, test, te_idx, source).argmax(1), names)))
        together = {f: predict_table(task, cut[f], te_idx, source) for f in FRACTIONS} if members > 1 else None
        record(curve, "agrifm", alone, together)  # one AgriFM model serves both: its recipe has the cuts
        record(full, "agrifm", {1.0: alone[1.0]}, together and {1.0: together[1.0]})
        times["agrifm"] += time.time() - clock

        for name, build, recipe, dated in (
            ("random_forest", None, None, False),
            ("temporal_cnn", lambda: TempCNN(x_tr.shape[-1], k, frames=t), TEMPCNN_RECIPE, False),
            ("ltae", lambda: LTAE(x_tr.shape[-1], k), LTAE_RECIPE, True),
            ("temporal_cnn_pooled", lambda: PooledTemporalCNN(x_tr.shape[-1], k),
             {**POOLED_RECIPE, "epochs": _steps_epochs(len(tr_idx), 64, 3000, 60)}, False),
        ):
            clock = time.time()
            for into, early in ((full, False), (curve, True)):
                probs = forest_probs(seed, early) if build is None else torch_probs(build, recipe, seed, dated, early)
                record(into, name, probs)
            times[name] += time.time() - clock
        print(f"seed {seed}: " + ", ".join(f"{m} OA {full[m][1.0][-1]['oa']:.4f} mF1 {full[m][1.0][-1]['mf1']:.4f}"
                                          for m in rows) + "; seconds so far " + ", ".join(
                                              f"{m} {v:.0f}" for m, v in times.items()), flush=True)

    def agg(rows_: list[dict]) -> dict:
        out = {}
        for key in ("oa", "mf1", "kappa"):
            v = np.array([r[key] for r in rows_], dtype=np.float64)
            out[key], out[f"{key}_std"] = float(np.nanmean(v)), float(np.nanstd(v))
        out["n_test"] = int(len(te_idx))
        out["seeds"] = len(rows_)
        return out

    summary: dict[str, Any] = {m: agg(full[m][1.0]) for m in rows}
    summary["early_season"] = {m: {f"{f:g}": agg(r) for f, r in curve[m].items()} for m in rows}
    if other:
        summary["agrifm_prior_correction"] = {f"{c:g}": agg(r) for c, r in other.items()}
    summary["setup"] = {"train": str(train_path), "test": str(test_path) if test_path else f"grouped holdout {holdout}",
                        "n_train": int(len(tr_idx)), "classes": names, "bands": list(train.bands), "frames": t,
                        "device": "cuda" if torch.cuda.is_available() else "cpu", "date": time.strftime("%Y-%m-%d"),
                        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
                        "agrifm_overrides": overrides or {}, "members": members,
                        "agrifm_epochs": cfg.epochs, "agrifm_steps": cfg.epochs * _steps_per_epoch(len(tr_idx), cfg.batch_size),
                        "early_season_training": trunc, "seconds": {m: round(v, 1) for m, v in times.items()},
                        "recipes": {"temporal_cnn": TEMPCNN_RECIPE, "ltae": LTAE_RECIPE}}
    return summary


def _rows(s: dict) -> list[str]:
    return [m for m in s["early_season"]]


def print_table(s: dict) -> None:
    first = s["agrifm"]
    print(f"\n{'model':<28} {'OA':>16} {'mF1':>16} {'kappa':>16}   (mean ± std over {first['seeds']} seeds, "
          f"n_test={first['n_test']}; single models first)")
    for name in _rows(s):
        r = s[name]
        print(f"{name:<28} {r['oa']:.4f} ± {r['oa_std']:.4f}  {r['mf1']:.4f} ± {r['mf1_std']:.4f}  "
              f"{r['kappa']:.4f} ± {r['kappa_std']:.4f}")
    if s.get("agrifm_prior_correction"):
        print("\nAgriFM (the single model), scored with other prior corrections:")
    for c, r in s.get("agrifm_prior_correction", {}).items():
        print(f"  correction {c:<5} OA {r['oa']:.4f} ± {r['oa_std']:.4f}   mF1 {r['mf1']:.4f} ± {r['mf1_std']:.4f}   "
              f"kappa {r['kappa']:.4f} ± {r['kappa_std']:.4f}")
    print("\nEarly season (each model trained with the same truncation augmentation), OA / mF1:")
    fr = list(s["early_season"]["agrifm"])
    print(f"  {'model':<26} " + "  ".join(f"{'first ' + format(float(f), '.0%'):>17}" for f in fr))
    for name in _rows(s):
        cells = [f"{r['oa']:.4f} / {r['mf1']:.4f}" for r in s["early_season"][name].values()]
        print(f"  {name:<26} " + "  ".join(f"{c:>17}" for c in cells))


METRICS = {"oa": ("OA", "#4c72b0"), "mf1": ("mF1", "#dd8452")}  # name, colour
COLOURS = {"agrifm": "#c44e52", "random_forest": "#55a868", "temporal_cnn": "#4c72b0", "ltae": "#8172b2",
           "temporal_cnn_pooled": "#937860"}


def _short(path: str) -> str:
    """``region/train.csv`` says more than ``train.csv``; a hold-out description stays as it is."""
    return "/".join(Path(path).parts[-2:]) if Path(path).suffix else path


def plot(s: dict, path: str) -> None:
    """Left: OA and mF1 per single model (bars = mean, whiskers = std over seeds). Middle and
    right: the early-season OA and mF1 of every single model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [m for m in _rows(s) if not m.endswith("_ensemble")]
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax, *curves = fig.subplots(1, 3, width_ratios=(1.4, 1, 1))
    x = np.arange(len(models))
    for i, (metric, (name, color)) in enumerate(METRICS.items()):
        mean = [s[m][metric] for m in models]
        std = [s[m][f"{metric}_std"] for m in models]
        bars = ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=std, capsize=3, color=color, label=name)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=7)
    for curve, (metric, (name, _)) in zip(curves, METRICS.items()):
        for m in models:
            rows = s["early_season"][m]
            fr = [float(f) for f in rows]
            mean = np.array([r[metric] for r in rows.values()])
            std = np.array([r[f"{metric}_std"] for r in rows.values()])
            colour = COLOURS.get(m, None)
            curve.plot(fr, mean, "o-", color=colour, label=LABELS.get(m, m), lw=2.2 if m == "agrifm" else 1.2)
            curve.fill_between(fr, mean - std, mean + std, color=colour, alpha=0.15)
        curve.set_xticks(fr, [f"{f:.0%}" for f in fr])
        curve.set_xlabel("frames kept (from the start of each series)")
        curve.set_ylim(0.0, 1.0)
        curve.grid(alpha=0.3)
        curve.set_title(f"early season {name} (same truncation training)", fontsize=10)
        curve.legend(loc="lower right", fontsize=8)
    lo = min(min(s[m]["oa"], s[m]["mf1"]) for m in models)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xticks(x, [LABELS.get(m, m) for m in models], fontsize=8)
    ax.set_title(f"held-out accuracy, single models (n_test={s['agrifm']['n_test']}, {s['agrifm']['seeds']} seeds)",
                 fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"train {_short(s['setup']['train'])}, test {_short(s['setup']['test'])}", fontsize=10)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training table (long CSV/Parquet)")
    ap.add_argument("--test", default=None, help="held-out table; without it a grouped hold-out of --train is used")
    ap.add_argument("--holdout", type=float, default=0.3, help="grouped hold-out fraction when --test is absent")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--agrifm-steps", type=int, default=2400,
                    help="AgriFM's training steps per seed at least (small tables: as many epochs as fit)")
    ap.add_argument("--agrifm-max-steps", type=int, default=None,
                    help="AgriFM's steps per seed at most, for 23-date series (default twice --agrifm-steps; "
                         "large tables train 25 epochs up to this)")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--plot", default=None, help="write a PNG of the table and the early-season curve here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an AgriFM PointFitConfig setting (model.KEY for the model dict); repeatable")
    ap.add_argument("--corrections", default="", metavar="C1,C2",
                    help="also score the same AgriFM models with these prior corrections (fractions in [0, 1])")
    ap.add_argument("--members", type=int, default=1,
                    help="models per ensemble row: above 1, every model also gets an <name>_ensemble row of this many "
                         "(single rows are then member 0); default 1: single models only")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.set)
    torch.set_num_threads(args.threads)  # small models: 1 thread avoids OpenMP stalls on busy machines
    corrections = [float(c) for c in args.corrections.split(",") if c.strip()]
    if any(not 0.0 <= c <= 1.0 for c in corrections):
        raise SystemExit(f"--corrections {args.corrections}: expected fractions in [0, 1]")
    s = run(args.train, args.test, args.holdout, args.seeds, args.agrifm_steps, args.quiet, overrides, corrections,
            args.agrifm_max_steps, args.members)
    print_table(s)
    if args.json:
        write_text_atomic(args.json, json.dumps(s, indent=2))
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(s, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
