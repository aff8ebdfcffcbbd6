#!/usr/bin/env python
"""AgriFM vs classic baselines on labelled pixel time series, same split, several seeds.

    python benchmarks/accuracy.py --train TRAIN.csv --test TEST.csv [--seeds 3] [--json OUT]
    python benchmarks/accuracy.py --train TABLE.csv --holdout 0.3 ...   (grouped split of one table)
    ... --plot OUT.png          (bars per model with their spread, and the early-season curve)
    ... --set lr=0.002 --set model.embed_dim=48   (override AgriFM's PointFitConfig defaults)
    ... --corrections 1.0,0.5   (also score the same AgriFM models with other prior corrections)

TABLE: long CSV/Parquet with ``sample_id``, ``label``, ``date`` and one numeric column per band
(any names, any count, gaps allowed). Models: AgriFM (point classifier trained in the
variable-length mode; by default an ensemble of two, ``PointFitConfig.members``), a Random
Forest on the flattened series, and a TempCNN. Every figure is the mean over seeds with its
standard deviation. AgriFM trains at least ``--agrifm-steps`` steps per seed, 25 epochs on tables
large enough for that to be more, up to ``--agrifm-max-steps`` (``agrifm_step_budget``); the JSON's
``setup`` says how many it took. Also prints AgriFM's early-season curve:
held-out OA/mF1 with each series cut after 1/4, 1/2, 3/4 and all of its frames, from the same
model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
LABELS = {"agrifm": "AgriFM", "random_forest": "Random Forest", "temporal_cnn": "TempCNN"}


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


def run(train_path: str, test_path: str | None, holdout: float, seeds: int, agrifm_steps: int, quiet: bool,
        overrides: dict | None = None, corrections: list[float] | None = None,
        agrifm_max_steps: int | None = None) -> dict:
    from agrifm.models.baselines import RandomForestBaseline, TemporalCNN, predict_logits, train_torch_classifier

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
    y_tr, y_te = train.labels[tr_idx], test.labels[te_idx]
    source = source_from_table(train, tr_idx, "table")
    mean, std = np.asarray(source.mean, np.float32), np.asarray(source.std, np.float32)
    x_tr = _normalised(train.values[tr_idx], train.dates[tr_idx], mean, std)
    x_te = _normalised(test.values[te_idx], test.dates[te_idx], mean, std)
    print(f"train {train_path}: {len(tr_idx)} series; test {test_path or f'grouped hold-out {holdout:.0%}'}: "
          f"{len(te_idx)} series; {len(names)} classes; bands {list(train.bands)}; {t} dates", flush=True)

    results: dict[str, list[dict]] = {name: [] for name in LABELS}
    curve: dict[float, list[dict]] = {f: [] for f in FRACTIONS}
    other: dict[float, list[dict]] = {c: [] for c in corrections or []}
    ceiling = 2 * agrifm_steps if agrifm_max_steps is None else agrifm_max_steps
    for seed in range(seeds):
        t0 = time.time()
        cfg = _config(seed, quiet, overrides or {})
        budget = agrifm_step_budget(len(tr_idx), t, cfg.batch_size, agrifm_steps, ceiling)
        cfg.epochs = _steps_epochs(len(tr_idx), cfg.batch_size, budget, 200)
        task = fit_point_classifier(train, tr_idx, source, cfg)
        for f in FRACTIONS:
            probs = predict_table(task, test.truncated(f), te_idx, source)
            curve[f].append(_scores(y_te, probs.argmax(1), names))
        results["agrifm"].append(curve[1.0][-1])
        for c in other:
            other[c].append(rescored(task, cfg, y_tr, c, lambda t: _scores(
                y_te, predict_table(t, test, te_idx, source).argmax(1), names)))
        t1 = time.time()
        rf = RandomForestBaseline(n_estimators=300, seed=seed).fit(x_tr, y_tr)
        results["random_forest"].append(_scores(y_te, rf.predict(x_te), names))
        t2 = time.time()
        torch.manual_seed(seed)
        cnn = TemporalCNN(x_tr.shape[-1], len(names))
        epochs = _steps_epochs(len(tr_idx), 64, 3000, 60)
        train_torch_classifier(cnn, x_tr, y_tr, epochs=epochs, batch_size=64, lr=1e-3, weight_decay=1e-4,
                               seed=seed, augment_noise=0.03, progress=not quiet)
        results["temporal_cnn"].append(_scores(y_te, predict_logits(cnn, x_te).argmax(1).numpy(), names))
        t3 = time.time()
        print(f"seed {seed}: AgriFM OA {results['agrifm'][-1]['oa']:.4f} ({t1 - t0:.0f}s), "
              f"RF {results['random_forest'][-1]['oa']:.4f} ({t2 - t1:.0f}s), "
              f"TempCNN {results['temporal_cnn'][-1]['oa']:.4f} ({t3 - t2:.0f}s)", flush=True)

    def agg(rows: list[dict]) -> dict:
        out = {}
        for k in ("oa", "mf1", "kappa"):
            v = np.array([r[k] for r in rows], dtype=np.float64)
            out[k], out[f"{k}_std"] = float(np.nanmean(v)), float(np.nanstd(v))
        out["n_test"] = int(len(te_idx))
        out["seeds"] = len(rows)
        return out

    summary = {name: agg(rows) for name, rows in results.items()}
    summary["early_season"] = {f"{f:g}": agg(rows) for f, rows in curve.items()}
    if other:
        summary["agrifm_prior_correction"] = {f"{c:g}": agg(rows) for c, rows in other.items()}
    summary["setup"] = {"train": str(train_path), "test": str(test_path) if test_path else f"grouped holdout {holdout}",
                        "n_train": int(len(tr_idx)), "classes": names, "bands": list(train.bands), "frames": t,
                        "device": "cuda" if torch.cuda.is_available() else "cpu", "date": time.strftime("%Y-%m-%d"),
                        "agrifm_overrides": overrides or {}, "agrifm_members": cfg.members,
                        "agrifm_epochs": cfg.epochs, "agrifm_steps": cfg.epochs * _steps_per_epoch(len(tr_idx), cfg.batch_size)}
    return summary


def print_table(s: dict) -> None:
    print(f"\n{'model':<14} {'OA':>16} {'mF1':>16} {'kappa':>16}   (mean ± std over {s['agrifm']['seeds']} seeds, n_test={s['agrifm']['n_test']})")
    for name in LABELS:
        r = s[name]
        print(f"{name:<14} {r['oa']:.4f} ± {r['oa_std']:.4f}  {r['mf1']:.4f} ± {r['mf1_std']:.4f}  {r['kappa']:.4f} ± {r['kappa_std']:.4f}")
    if s.get("agrifm_prior_correction"):
        print("\nAgriFM, the same models scored with other prior corrections:")
    for c, r in s.get("agrifm_prior_correction", {}).items():
        print(f"  correction {c:<5} OA {r['oa']:.4f} ± {r['oa_std']:.4f}   mF1 {r['mf1']:.4f} ± {r['mf1_std']:.4f}   "
              f"kappa {r['kappa']:.4f} ± {r['kappa_std']:.4f}")
    print("\nAgriFM early season (the same model, variable-length mode):")
    for f, r in s["early_season"].items():
        print(f"  first {float(f):>4.0%} of frames: OA {r['oa']:.4f} ± {r['oa_std']:.4f}   mF1 {r['mf1']:.4f} ± {r['mf1_std']:.4f}")


METRICS = {"oa": ("OA", "#4c72b0"), "mf1": ("mF1", "#dd8452")}  # name, colour


def _short(path: str) -> str:
    """``region/train.csv`` says more than ``train.csv``; a hold-out description stays as it is."""
    return "/".join(Path(path).parts[-2:]) if Path(path).suffix else path


def plot(s: dict, path: str) -> None:
    """Left: OA and mF1 per model (bars = mean, whiskers = std over seeds). Right: the early-season curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax, curve = fig.subplots(1, 2, width_ratios=(1.2, 1))
    x = np.arange(len(LABELS))
    fr = [float(f) for f in s["early_season"]]
    for i, (metric, (name, color)) in enumerate(METRICS.items()):
        mean = [s[m][metric] for m in LABELS]
        std = [s[m][f"{metric}_std"] for m in LABELS]
        bars = ax.bar(x + (i - 0.5) * 0.38, mean, 0.38, yerr=std, capsize=3, color=color, label=name)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
        mean = np.array([r[metric] for r in s["early_season"].values()])
        std = np.array([r[f"{metric}_std"] for r in s["early_season"].values()])
        curve.plot(fr, mean, "o-", color=color, label=f"AgriFM {name}")
        curve.fill_between(fr, mean - std, mean + std, color=color, alpha=0.2)
    lo = min(min(s[m]["oa"], s[m]["mf1"]) for m in LABELS)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xticks(x, list(LABELS.values()))
    ax.set_title(f"held-out accuracy (n_test={s['agrifm']['n_test']}, {s['agrifm']['seeds']} seeds)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, fontsize=8, frameon=False)
    curve.set_xticks(fr, [f"{f:.0%}" for f in fr])
    curve.set_xlabel("frames kept (from the start of each series)")
    curve.set_ylim(0.0, 1.0)
    curve.grid(alpha=0.3)
    curve.set_title("AgriFM early season (the same model)", fontsize=10)
    curve.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"train {_short(s['setup']['train'])}, test {_short(s['setup']['test'])}", fontsize=10)
    fig.savefig(path, dpi=120)


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
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.set)
    torch.set_num_threads(args.threads)  # small models: 1 thread avoids OpenMP stalls on busy machines
    corrections = [float(c) for c in args.corrections.split(",") if c.strip()]
    if any(not 0.0 <= c <= 1.0 for c in corrections):
        raise SystemExit(f"--corrections {args.corrections}: expected fractions in [0, 1]")
    s = run(args.train, args.test, args.holdout, args.seeds, args.agrifm_steps, args.quiet, overrides, corrections,
            args.agrifm_max_steps)
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
