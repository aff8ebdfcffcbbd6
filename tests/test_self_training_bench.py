"""benchmarks/self_training.py: pseudo-label selection, stacking tables, and a tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from agrifm.data.tables import read_table
from conftest import benchmark

st = benchmark("self_training")


def _table(path, n: int, seed: int) -> None:
    """Two classes told apart by the shape of their season (a bump early vs late), 8 dates, 2 bands."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "early" if i % 2 else "late"
        for t, day in enumerate(pd.date_range("2021-01-01", periods=8, freq="MS")):
            bump = np.exp(-((t - (2 if label == "early" else 5)) ** 2) / 2.0)
            rows.append({"sample_id": f"{seed}-{i}", "label": label, "date": day.date().isoformat(),
                         "red": 0.1 + 0.02 * rng.standard_normal(), "nir": 0.2 + 0.5 * bump + 0.03 * rng.standard_normal()})
    pd.DataFrame(rows).to_csv(path, index=False)


def test_pseudo_labels_take_the_confident_rows_and_their_class():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.5, 0.5]])
    keep, labels = st.pseudo_labelled(probs, 0.9)
    assert keep.tolist() == [0, 2] and labels.tolist() == [0, 1]
    keep, _ = st.pseudo_labelled(probs, 0.99)
    assert keep.tolist() == []


def test_stacked_tables_keep_rows_and_take_the_new_labels(tmp_path):
    _table(tmp_path / "a.csv", 6, 0)
    _table(tmp_path / "b.csv", 4, 1)
    a, b = read_table(tmp_path / "a.csv"), read_table(tmp_path / "b.csv")
    both = st.stacked(a, np.array([0, 2]), b, np.array([1, 3]), np.array([1, 1]))
    assert len(both) == 4 and both.labels.tolist() == [a.labels[0], a.labels[2], 1, 1]
    np.testing.assert_array_equal(both.values[2], b.values[1])
    assert both.sample_ids.tolist() == [a.sample_ids[0], a.sample_ids[2], b.sample_ids[1], b.sample_ids[3]]
    empty = st.stacked(a, np.arange(6), b, np.array([], int), np.array([], int))
    assert len(empty) == 6


def test_self_training_runs_end_to_end(tmp_path):
    _table(tmp_path / "train.csv", 64, 0)
    _table(tmp_path / "test.csv", 40, 1)
    out = tmp_path / "st.json"
    assert st.main(["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--seeds", "1",
                    "--agrifm-steps", "150", "--set", "model.embed_dim=16", "--set", "lr=0.003", "--tau", "0.6", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    for row in ("agrifm", "agrifm_self_trained"):
        assert set(s[row]) == {"oa", "oa_std", "mf1", "mf1_std", "n_test"} and s[row]["n_test"] == 40
        assert 0.0 <= s[row]["oa"] <= 1.0
    assert s["agrifm"]["oa"] > 0.8  # an easy task: the plain model learns it in 150 steps
    assert 0.0 < s["pseudo_labels"][0]["share"] <= 1.0 and s["pseudo_labels"][0]["accuracy"] > 0.8
