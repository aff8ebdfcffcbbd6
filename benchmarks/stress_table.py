#!/usr/bin/env python
"""A larger, noisier training table from a real one, for stress-testing ``accuracy.py``.

Splits TABLE by location (the same grouped split ``accuracy.py --holdout`` uses), writes the
held-out part unchanged as ``OUT/test.csv`` and N noisy copies of the training series as
``OUT/train.csv``: each copy gets a per-value gain (±``--gain`` std), a per-series offset of 2 %
of each band's std, and ``--blank`` of its dates blanked (NaN, i.e. gaps). Then:

    python benchmarks/stress_table.py --table mato_grosso_train.csv --out runs/stress
    python benchmarks/accuracy.py --train runs/stress/train.csv --test runs/stress/test.csv --seeds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from agrifm.data.tables import grouped_split, read_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True, help="long CSV/Parquet (sample_id, label, date, bands)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--copies", type=int, default=6000, help="training series to write")
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--gain", type=float, default=0.05)
    ap.add_argument("--blank", type=float, default=0.08)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)

    table = read_table(a.table)
    train_idx, test_idx = grouped_split(table, a.holdout, seed=0)
    df = pd.read_parquet(a.table) if a.table.endswith(".parquet") else pd.read_csv(a.table)
    df["sample_id"] = df["sample_id"].astype(str)
    ids = np.asarray(table.sample_ids).astype(str)
    bands = list(table.bands)
    a.out.mkdir(parents=True, exist_ok=True)
    df[df.sample_id.isin(set(ids[test_idx]))].to_csv(a.out / "test.csv", index=False)

    rng = np.random.default_rng(a.seed)
    groups = dict(list(df[df.sample_id.isin(set(ids[train_idx]))].groupby("sample_id")))
    keys, std = list(groups), df[bands].std().to_numpy()
    copies = []
    for k in range(a.copies):
        s = groups[keys[rng.integers(len(keys))]].copy()
        s["sample_id"] = f"copy{k}"
        s[bands] = s[bands] * (1 + rng.normal(0, a.gain, (len(s), len(bands)))) + rng.normal(0, 0.02, (1, len(bands))) * std
        s.loc[rng.random(len(s)) < a.blank, bands] = np.nan
        copies.append(s)
    pd.concat(copies).to_csv(a.out / "train.csv", index=False)
    print(f"wrote {a.out / 'train.csv'} ({a.copies} noisy copies of {len(keys)} series) and "
          f"{a.out / 'test.csv'} ({len(test_idx)} held-out series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
