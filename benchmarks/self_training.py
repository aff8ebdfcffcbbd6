#!/usr/bin/env python
"""Self-training of the AgriFM point model on the unlabelled test series, side by side with the
plain model, same tables, split and seeds (an experiment for issue #18, not a default).

    python benchmarks/self_training.py --train TRAIN.csv --test TEST.csv [--seeds 3] [--tau 0.9]
    python benchmarks/self_training.py --train TABLE.csv --holdout 0.3 ...

Per seed: the default AgriFM point model (``accuracy.py``'s ``agrifm`` row: same step budget),
then a second model trained from scratch, with the same number of steps, on the training series
plus the test series whose predicted class probability is at least ``--tau``, labelled with that
prediction (pseudo-labels; the test labels are used only to score). Prints both rows, the
difference, and the share and accuracy of the pseudo-labels; ``--json`` writes them. The second
model costs as much as the first, so the time per seed doubles.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import _config, _scores, _steps_epochs, agrifm_step_budget, load_tables, parse_overrides  # noqa: E402

from agrifm.data.tables import SeriesTable  # noqa: E402
from agrifm.io import write_text_atomic  # noqa: E402
from agrifm.tasks.pointfit import fit_point_classifier, predict_table, source_from_table  # noqa: E402


def stacked(a: SeriesTable, a_index: np.ndarray, b: SeriesTable, b_index: np.ndarray, b_labels: np.ndarray) -> SeriesTable:
    """Rows ``a_index`` of ``a`` followed by rows ``b_index`` of ``b`` relabelled ``b_labels``
    (both tables on one class list and one frame grid)."""
    top, bottom = a.subset(a_index), dataclasses.replace(b.subset(b_index), labels=np.asarray(b_labels, np.int64))
    if top.values.shape[1:] != bottom.values.shape[1:] or top.class_names != bottom.class_names:
        raise ValueError("stacked: the tables differ in frames, bands or classes")
    joined = {f.name: np.concatenate([getattr(top, f.name), getattr(bottom, f.name)])
              for f in dataclasses.fields(top) if isinstance(getattr(top, f.name), np.ndarray)}
    return dataclasses.replace(top, **joined)


def pseudo_labelled(probs: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows whose top class probability is at least ``tau``, and that class."""
    keep = np.flatnonzero(probs.max(axis=1) >= tau)
    return keep, probs[keep].argmax(axis=1)


def _mean_std(rows: list[dict], key: str) -> tuple[float, float]:
    v = [r[key] for r in rows]
    return float(np.mean(v)), float(np.std(v))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training table (long CSV/Parquet)")
    ap.add_argument("--test", default=None, help="held-out table; without it a grouped hold-out of --train is used")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tau", type=float, default=0.9, help="pseudo-label the test series predicted this confidently")
    ap.add_argument("--agrifm-steps", type=int, default=2400, help="as accuracy.py's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as accuracy.py's")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not 0.0 < args.tau <= 1.0:
        raise SystemExit(f"--tau {args.tau}: expected a probability in (0, 1]")
    torch.set_num_threads(1)
    overrides = parse_overrides(args.set)
    train, test, tr_idx, te_idx = load_tables(args.train, args.test, args.holdout)
    names, y = train.class_names, test.labels[te_idx]
    source = source_from_table(train, tr_idx, "table")  # both models: the training rows' statistics
    batch = _config(0, True, overrides).batch_size
    budget = agrifm_step_budget(len(tr_idx), train.values.shape[1], batch, args.agrifm_steps, 2 * args.agrifm_steps)
    epochs = _steps_epochs(len(tr_idx), batch, budget, 200)  # the first model's: accuracy.py's agrifm row
    rows: dict[str, list[dict]] = {"agrifm": [], "agrifm_self_trained": []}
    pseudo = []
    for seed in range(args.seeds):
        clock = time.time()
        cfg = _config(seed, True, overrides)
        cfg.members, cfg.epochs = 1, epochs
        probs = predict_table(fit_point_classifier(train, tr_idx, source, cfg), test, te_idx, source)
        rows["agrifm"].append(_scores(y, probs.argmax(1), names))
        keep, labels = pseudo_labelled(probs, args.tau)
        both = stacked(train, tr_idx, test, te_idx[keep], labels)
        second = dataclasses.replace(cfg, epochs=_steps_epochs(len(both), batch, budget, 200))
        probs2 = predict_table(fit_point_classifier(both, np.arange(len(both)), source, second), test, te_idx, source)
        rows["agrifm_self_trained"].append(_scores(y, probs2.argmax(1), names))
        pseudo.append({"share": len(keep) / max(len(te_idx), 1),
                       "accuracy": float((labels == y[keep]).mean()) if len(keep) else float("nan")})
        print(f"seed {seed}: OA {rows['agrifm'][-1]['oa']:.4f} -> {rows['agrifm_self_trained'][-1]['oa']:.4f}, "
              f"mF1 {rows['agrifm'][-1]['mf1']:.4f} -> {rows['agrifm_self_trained'][-1]['mf1']:.4f}; pseudo-labels "
              f"{pseudo[-1]['share']:.0%} of the test series, {pseudo[-1]['accuracy']:.4f} right; "
              f"{time.time() - clock:.0f} s", flush=True)
    summary: dict = {"train": args.train, "test": args.test or f"grouped hold-out {args.holdout}", "tau": args.tau,
                     "seeds": args.seeds, "steps": budget, "pseudo_labels": pseudo}
    for name, got in rows.items():
        (oa, oa_std), (mf1, mf1_std) = _mean_std(got, "oa"), _mean_std(got, "mf1")
        summary[name] = {"oa": oa, "oa_std": oa_std, "mf1": mf1, "mf1_std": mf1_std, "n_test": len(te_idx)}
        print(f"{name:<22} OA {oa:.4f} ± {oa_std:.4f}   mF1 {mf1:.4f} ± {mf1_std:.4f}")
    d_oa = summary["agrifm_self_trained"]["oa"] - summary["agrifm"]["oa"]
    d_mf1 = summary["agrifm_self_trained"]["mf1"] - summary["agrifm"]["mf1"]
    print(f"self-training - plain: OA {d_oa:+.4f}, mF1 {d_mf1:+.4f} (same seeds, same split)")
    if args.json:
        write_text_atomic(args.json, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
