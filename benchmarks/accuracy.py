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
  one model, self-trained: a supervised model labels the test series it predicts with a class
  probability of at least ``self_training`` (0.9; their labels are never read), and the row's
  model is trained from scratch on the training plus those series (``pointfit.self_trained``);
- extra row ``agrifm_supervised``: the supervised model it started from (trained on the training
  series alone; ``--set self_training=null`` makes it the ``agrifm`` row and drops this one);
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
L-TAE also masks the frames past the cut. AgriFM's recipe already holds these cuts, so its
supervised model gives its curve (a self-trained model's pseudo-labels come from whole test
series, which an early-season model does not have); the baselines' rows come from models trained
by their own recipes (no cuts: the cut copies cost the forest 0.02 OA on Mato Grosso), their
curves from a second model of each trained with the cuts (so a "1" point may differ from its row).
"""

from __future__ import annotations

import argparse
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
    PointFitConfig, epochs_within, fit_point_classifier, predict_table, prior_logit_bias, self_trained,
    source_from_table, steps_per_epoch, uses_observed,
)
from agrifm.runtime import cpu_description, die_with_parent, usable_cores  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
T = TypeVar("T")
LABELS = {"agrifm": "AgriFM", "random_forest": "Random Forest", "temporal_cnn": "TempCNN", "ltae": "L-TAE",
          "temporal_cnn_pooled": "pooled CNN"}
SINGLE = ("agrifm", "random_forest", "temporal_cnn", "ltae")  # the four rows every table reports
# Rows that come with a model rather than being chosen: the supervised AgriFM model that the
# self-trained one started from.
EXTRA = {"agrifm_supervised": "AgriFM supervised"}


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


REFERENCE_FRAMES = 23  # the series length the ceiling is sized for (~6,000 x 23 tables in 30 min on 2 cores)


def agrifm_step_budget(n: int, frames: int, batch: int, floor: int, ceiling: int, epochs: int = 25) -> int:
    """AgriFM's training steps per seed: at least ``floor``, enough for ``epochs`` passes over a
    larger table, at most ``ceiling``. The ceiling shrinks in proportion for series longer than
    ``REFERENCE_FRAMES`` (a step's time grows with the dates) but never below the floor.

    Small tables get many passes within the floor; a table of 6,000 series gets 25 passes rather
    than 12 (stress table, 3 seeds: OA 0.9722 -> 0.9747, README)."""
    cap = max(floor, int(ceiling * min(1.0, REFERENCE_FRAMES / max(frames, 1))))
    return min(cap, max(floor, epochs * steps_per_epoch(n, batch)))


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
    cfg = PointFitConfig(seed=seed, progress=not quiet, **over)
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


def _run_jobs(specs: list[tuple], ctx: dict, workers: int):
    """Yield ``(spec, result)`` for every job, in this process or in ``workers`` spawned ones."""
    if workers <= 1:
        _init_worker(ctx, None)
        for spec in specs:
            yield spec, _job(spec)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(ctx, os.getpid())) as pool:
        futures = {pool.submit(_job, spec): spec for spec in specs}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


_CTX: dict = {}


def _init_worker(ctx: dict, parent: int | None) -> None:
    if parent is not None:
        die_with_parent(parent)
    _CTX.clear()
    _CTX.update(ctx)
    torch.set_num_threads(ctx["threads"])


def _job(spec: tuple) -> dict:
    """Train one model of ``spec = (name, seed, early)``; its test probabilities per season fraction
    (``probs[f]``: one array per member), the ensemble's for AgriFM, rescored prior corrections."""
    from agrifm.models.baselines import (
        LTAE, LTAE_RECIPE, POOLED_RECIPE, TEMPCNN_RECIPE, PooledTemporalCNN, RandomForestBaseline, TempCNN,
    )
    from agrifm.tasks.baseline_training import predict_logits, train_torch_classifier

    name, seed, early = spec
    c = _CTX
    members, k, trunc, y_tr = c["members"], c["k"], c["trunc"], c["y_tr"]
    fractions = FRACTIONS if early else (1.0,)
    probs: dict[float, list[np.ndarray]] = {f: [] for f in fractions}
    out: dict[str, Any] = {"probs": probs, "corrections": {}}
    clock = time.time()
    if name == "agrifm":
        # Each member: the supervised model (its early-season curve: its pseudo-labels would come
        # from whole test series, which an early-season model cannot see) and, with self-training,
        # the model self-trained on the unlabelled test series (the row).
        out["row"], out["pseudo"] = [], []
        y_te, names = c["test"].labels[c["te_idx"]], c["train"].class_names
        for i in range(members):
            cfg = _config(seed * members + i, c["quiet"], c["overrides"])
            cfg.members, cfg.epochs = 1, c["agrifm_epochs"]
            task = fit_point_classifier(c["train"], c["tr_idx"], c["source"], cfg)
            for f in fractions:
                probs[f].append(predict_table(task, c["cut"][f], c["te_idx"], c["source"]))
            y_fit = y_tr
            if cfg.self_training:
                task, pseudo = self_trained(task, c["train"], c["tr_idx"], c["source"], cfg,
                                            c["test"].subset(c["te_idx"]))
                out["row"].append(predict_table(task, c["test"], c["te_idx"], c["source"]))
                out["pseudo"].append({"share": len(pseudo.index) / max(pseudo.pool, 1), "accuracy": float(
                    (pseudo.labels == y_te[pseudo.index]).mean()) if len(pseudo.index) else float("nan")})
                y_fit = np.concatenate([y_tr, pseudo.labels])
            else:
                out["row"].append(probs[1.0][-1])
            if i == 0 and c["corrections"]:
                out["corrections"] = {corr: rescored(task, cfg, y_fit, corr, lambda tk: _scores(
                    y_te, predict_table(tk, c["test"], c["te_idx"], c["source"]).argmax(1), names))
                    for corr in c["corrections"]}
    elif name == "random_forest":
        for i in range(members):
            s = seed * members + i
            x, y = c["x_tr"], y_tr
            if early:
                extra, pick = _truncated_copies(x, trunc["random_truncation"], trunc["min_fraction"], s)
                x, y = np.concatenate([x, extra]), np.concatenate([y, y[pick]])
            rf = RandomForestBaseline(n_estimators=300, seed=s).fit(x, y)
            for f in fractions:
                p = np.zeros((len(c["te_idx"]), k))
                p[:, rf.classes_] = rf.predict_proba(c["x_te"][f])
                probs[f].append(p)
    else:
        bands, t, n = c["x_tr"].shape[-1], c["t"], len(c["tr_idx"])
        build, recipe, dated = {
            "temporal_cnn": (lambda: TempCNN(bands, k, frames=t), TEMPCNN_RECIPE, False),
            "ltae": (lambda: LTAE(bands, k), LTAE_RECIPE, True),
            "temporal_cnn_pooled": (lambda: PooledTemporalCNN(bands, k),
                                    {**POOLED_RECIPE, "epochs": epochs_within(n, 64, 3000, 60)}, False),
        }[name]
        for i in range(members):
            torch.manual_seed(seed * members + i)
            model = build()
            train_torch_classifier(model, c["x_tr"], y_tr, seed=seed * members + i, progress=not c["quiet"],
                                   days=c["d_tr"] if dated else None, **{**recipe, **(trunc if early else {})})
            for f in fractions:
                logits = predict_logits(model, c["x_te"][f], days=c["d_te"] if dated else None,
                                        lengths=c["n_te"][f] if dated else None)
                probs[f].append(logits.softmax(1).numpy())
    out["seconds"] = time.time() - clock
    return out


def load_tables(train_path: str, test_path: str | None, holdout: float) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """``(train, test, train_index, test_index)``: two tables over one class list and one frame
    grid, or without ``test_path`` one table and its grouped hold-out (``test`` is ``train``)."""
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
        tr_idx, te_idx = np.arange(len(train)), np.arange(len(test))
    else:
        tr_idx, te_idx = grouped_split(train, holdout, seed=0)
        test = train
    # One frame grid for both sides (tables may differ in length): pad to the longer one.
    t = max(train.values.shape[1], test.values.shape[1])
    return train.padded(t), test.padded(t), tr_idx, te_idx


def run(train_path: str, test_path: str | None, holdout: float, seeds: int, agrifm_steps: int, quiet: bool,
        overrides: dict | None = None, corrections: list[float] | None = None,
        agrifm_max_steps: int | None = None, members: int = 1, models: list[str] | None = None,
        jobs: int | None = None, early_season: bool = True) -> dict:
    from agrifm.models.baselines import LTAE_RECIPE, TEMPCNN_RECIPE, day_positions

    if members < 1:
        raise SystemExit(f"--members {members}: expected at least 1")
    models = list(LABELS) if models is None else models
    unknown = [m for m in models if m not in LABELS]
    if unknown or not models:
        raise SystemExit(f"--models {','.join(models)}: expected some of {','.join(LABELS)}")
    train, test, tr_idx, te_idx = load_tables(train_path, test_path, holdout)
    t = train.values.shape[1]
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

    chosen = [m for m in LABELS if m in models]
    probe = _config(0, quiet, overrides or {})
    # With self-training the AgriFM row is the self-trained model; the supervised one it started
    # from is the extra row agrifm_supervised (and gives AgriFM's early-season curve).
    supervised = ["agrifm_supervised"] if "agrifm" in chosen and probe.self_training else []
    singles = chosen + supervised
    rows = singles + ([f"{m}_ensemble" for m in singles] if members > 1 else [])
    curved = chosen + ([f"{m}_ensemble" for m in chosen] if members > 1 else [])
    curve: dict[str, dict[float, list[dict]]] = {m: {f: [] for f in FRACTIONS} for m in curved}  # early-season training
    full: dict[str, dict[float, list[dict]]] = {m: {1.0: []} for m in rows}  # each model's own recipe
    other: dict[float, list[dict]] = {c: [] for c in corrections or []}
    ceiling = 2 * agrifm_steps if agrifm_max_steps is None else agrifm_max_steps
    trunc = dict(random_truncation=probe.random_truncation, min_fraction=probe.min_fraction)
    budget = agrifm_step_budget(len(tr_idx), t, probe.batch_size, agrifm_steps, ceiling)
    agrifm_epochs = epochs_within(len(tr_idx), probe.batch_size, budget, 200)
    # AgriFM's own recipe holds the season cuts (its variable-length mode), so one AgriFM job per
    # seed gives its row (self-trained) and its curve (the supervised model); each baseline's row
    # comes from its own recipe (no cuts).
    recipes = (False, True) if early_season else (False,)
    specs = [(name, seed, early) for seed in range(seeds) for name in chosen
             for early in ((early_season,) if name == "agrifm" else recipes)]
    workers = max(1, min(jobs or usable_cores(), len(specs)))
    ctx = dict(train=train, test=test, tr_idx=tr_idx, te_idx=te_idx, source=source, cut=cut, x_tr=x_tr, y_tr=y_tr,
               d_tr=d_tr, x_te=x_te, n_te=n_te, d_te=d_te, k=k, t=t, members=members, trunc=trunc,
               overrides=overrides or {}, agrifm_epochs=agrifm_epochs, corrections=list(other),
               quiet=quiet or workers > 1, threads=torch.get_num_threads())

    def record(into: dict[str, dict[float, list[dict]]], name: str, probs: dict[float, list[np.ndarray]]) -> None:
        """Score member 0 as the single model and, with several members, their mean probability as
        the ensemble."""
        for f, p in probs.items():
            into[name][f].append(_scores(y_te, p[0].argmax(1), names))
            if members > 1:
                into[f"{name}_ensemble"][f].append(_scores(y_te, np.mean(p, axis=0).argmax(1), names))

    # Every (model, seed, recipe) is an independent job: the row (the model's own recipe, no cuts)
    # and the early-season model (the same cuts for all). Jobs run side by side in worker
    # processes, one torch thread each (these models are too small to use more).
    times: dict[str, float] = {m: 0.0 for m in chosen}
    results: dict[tuple, dict] = {}
    clock = time.time()
    for spec, out in _run_jobs(specs, ctx, workers):
        results[spec] = out
        name, seed, early = spec
        times[name] += out["seconds"]
        oa = _scores(y_te, out.get("row", out["probs"][1.0])[0].argmax(1), names)["oa"]
        if name == "agrifm" and supervised:
            what = (f"self-trained; supervised OA {_scores(y_te, out['probs'][1.0][0].argmax(1), names)['oa']:.4f}, "
                    f"{out['pseudo'][0]['share']:.0%} of the test series pseudo-labelled")
        else:
            what = "row and early-season model" if name == "agrifm" else "early-season model" if early else "row model"
        print(f"{name} seed {seed} ({what}): OA {oa:.4f}, {out['seconds']:.0f} s "
              f"({len(results)}/{len(specs)} jobs, {time.time() - clock:.0f} s)", flush=True)
    pseudo: list[dict] = []
    for name, seed, early in specs:
        out = results[(name, seed, early)]
        if name == "agrifm":
            record(full, name, {1.0: out["row"]})
            if supervised:
                record(full, "agrifm_supervised", {1.0: out["probs"][1.0]})
                pseudo.extend(out["pseudo"][:1])
            if early:
                record(curve, name, out["probs"])
        else:
            record(curve if early else full, name, out["probs"])
        for c, score in out["corrections"].items():
            other[c].append(score)

    def agg(rows_: list[dict]) -> dict:
        out = {}
        for key in ("oa", "mf1", "kappa"):
            v = np.array([r[key] for r in rows_], dtype=np.float64)
            out[key], out[f"{key}_std"] = float(np.nanmean(v)), float(np.nanstd(v))
        out["n_test"] = int(len(te_idx))
        out["seeds"] = len(rows_)
        return out

    summary: dict[str, Any] = {m: agg(full[m][1.0]) for m in rows}
    if early_season:
        summary["early_season"] = {m: {f"{f:g}": agg(r) for f, r in curve[m].items()} for m in curved}
    if other:
        summary["agrifm_prior_correction"] = {f"{c:g}": agg(r) for c, r in other.items()}
    summary["setup"] = {"train": str(train_path), "test": str(test_path) if test_path else f"grouped holdout {holdout}",
                        "n_train": int(len(tr_idx)), "classes": names, "bands": list(train.bands), "frames": t,
                        "device": "cuda" if torch.cuda.is_available() else "cpu", "date": time.strftime("%Y-%m-%d"),
                        "machine": f"{platform.machine()} {os.cpu_count()} cores", "cpu": cpu_description(),
                        "agrifm_overrides": overrides or {}, "members": members,
                        "agrifm_observation_band": uses_observed(probe.observed_channel, train, tr_idx),
                        "agrifm_self_training": {"tau": probe.self_training, "balanced": probe.self_training_balanced,
                                                 "prior": probe.self_training_prior, "init": probe.self_training_init,
                                                 "max_steps": probe.self_training_steps,
                                                 "pseudo_labels": pseudo} if supervised else None,
                        "agrifm_epochs": agrifm_epochs,
                        "agrifm_steps": agrifm_epochs * steps_per_epoch(len(tr_idx), probe.batch_size),
                        "workers": workers, "wall_seconds": round(time.time() - clock, 1),
                        "early_season_training": trunc, "seconds": {m: round(v, 1) for m, v in times.items()},
                        "recipes": {"temporal_cnn": TEMPCNN_RECIPE, "ltae": LTAE_RECIPE}}
    return summary


SAME_SETUP = ("train", "test", "n_train", "classes", "bands", "frames", "early_season_training", "members")


def rows_from(s: dict, path: str) -> dict:
    """``s`` with the rows (and early-season curves) of the models it lacks copied from the
    summary at ``path``, which must describe the same tables, split, seeds and season cuts."""
    old = json.loads(Path(path).read_text())
    diff = [k for k in SAME_SETUP if old.get("setup", {}).get(k) != s["setup"].get(k)]
    first = _rows(s)[0]
    if diff or any(old.get(m, {}).get(k) != s[first][k] for m in _rows(old) for k in ("seeds", "n_test")):
        raise SystemExit(f"--rows-from {path}: another setup ({', '.join(diff) or 'seeds or test series'} differ)")
    out = dict(s)
    copied = [m for m in _rows(old) if m not in s]
    for m in copied:
        out[m] = old[m]
        if "early_season" in out and m in old.get("early_season", {}):
            out["early_season"] = {**out["early_season"], m: old["early_season"][m]}
    out["setup"] = {**s["setup"], "rows_from": {"path": str(path), "models": copied, "date": old["setup"].get("date")},
                    "seconds": {**old["setup"].get("seconds", {}), **s["setup"]["seconds"]}}
    # Columns in the usual order (AgriFM first), whichever run they came from.
    order = [m for m in (*LABELS, *EXTRA) if m in out] + [m for m in out if m.endswith("_ensemble")]
    return {**{m: out[m] for m in order}, **{k: v for k, v in out.items() if k not in order}}


def _rows(s: dict) -> list[str]:
    return [m for m in s if m.removesuffix("_ensemble") in LABELS or m.removesuffix("_ensemble") in EXTRA]


def print_table(s: dict) -> None:
    first = s[_rows(s)[0]]
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
    if "early_season" not in s:
        return
    print("\nEarly season (each model trained with the same truncation augmentation), OA / mF1:")
    curved = [m for m in _rows(s) if m in s["early_season"]]
    fr = list(s["early_season"][curved[0]])
    print(f"  {'model':<26} " + "  ".join(f"{'first ' + format(float(f), '.0%'):>17}" for f in fr))
    for name in curved:
        cells = [f"{r['oa']:.4f} / {r['mf1']:.4f}" for r in s["early_season"][name].values()]
        print(f"  {name:<26} " + "  ".join(f"{c:>17}" for c in cells))


METRICS = {"oa": ("OA", "#4c72b0"), "mf1": ("mF1", "#dd8452")}  # name, colour
COLOURS = {"agrifm": "#c44e52", "agrifm_supervised": "#e8a0a2", "random_forest": "#55a868", "temporal_cnn": "#4c72b0",
           "ltae": "#8172b2", "temporal_cnn_pooled": "#937860"}


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
        for m in (m for m in models if m in s["early_season"]):
            rows = s["early_season"][m]
            fr = [float(f) for f in rows]
            mean = np.array([r[metric] for r in rows.values()])
            std = np.array([r[f"{metric}_std"] for r in rows.values()])
            colour = COLOURS.get(m, None)
            label = f"{LABELS[m]} (supervised)" if m == "agrifm" and "agrifm_supervised" in s else LABELS.get(m, m)
            curve.plot(fr, mean, "o-", color=colour, label=label, lw=2.2 if m == "agrifm" else 1.2)
            curve.fill_between(fr, mean - std, mean + std, color=colour, alpha=0.15)
        curve.set_xticks(fr, [f"{f:.0%}" for f in fr])
        curve.set_xlabel("frames kept (from the start of each series)")
        curve.set_ylim(0.0, 1.0)
        curve.grid(alpha=0.3)
        curve.set_title(f"early season {name} (same truncation training)", fontsize=10)
        curve.legend(loc="lower right", fontsize=8)
    lo = min(min(s[m]["oa"], s[m]["mf1"]) for m in models)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    names = {**LABELS, **EXTRA, **({"agrifm": "AgriFM\n(self-trained)"} if "agrifm_supervised" in s else {})}
    ax.set_xticks(x, [names.get(m, m) for m in models], fontsize=8)
    ax.set_title(f"held-out accuracy, single models (n_test={s[models[0]]['n_test']}, {s[models[0]]['seeds']} seeds)",
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
    ap.add_argument("--models", default=",".join(LABELS), metavar="M1,M2",
                    help=f"rows to train (default all: {','.join(LABELS)}); the README tables need all four single rows")
    ap.add_argument("--jobs", type=int, default=None,
                    help="models trained side by side, one process and --threads threads each (default: one per core)")
    ap.add_argument("--no-early-season", action="store_true",
                    help="train only each model's row model (half the time; no early-season curve)")
    ap.add_argument("--rows-from", default=None, metavar="JSON",
                    help="copy the rows of the models not trained here (--models) from an earlier --json summary "
                         "of the same tables, split and seeds (every model's training is deterministic given its seed)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.plot and args.no_early_season:
        raise SystemExit("--plot needs the early-season curve: drop --no-early-season")
    overrides = parse_overrides(args.set)
    torch.set_num_threads(args.threads)  # small models: 1 thread avoids OpenMP stalls on busy machines
    corrections = [float(c) for c in args.corrections.split(",") if c.strip()]
    if any(not 0.0 <= c <= 1.0 for c in corrections):
        raise SystemExit(f"--corrections {args.corrections}: expected fractions in [0, 1]")
    s = run(args.train, args.test, args.holdout, args.seeds, args.agrifm_steps, args.quiet, overrides, corrections,
            args.agrifm_max_steps, args.members, [m.strip() for m in args.models.split(",") if m.strip()],
            args.jobs, not args.no_early_season)
    if args.rows_from:
        s = rows_from(s, args.rows_from)
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
