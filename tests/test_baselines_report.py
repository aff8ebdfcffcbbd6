"""benchmarks/baselines_report.py: the target of issue #18 and the extra columns."""

from __future__ import annotations

from conftest import benchmark

report = benchmark("baselines_report")


def _row(oa: float, mf1: float) -> dict:
    return {"oa": oa, "mf1": mf1, "oa_std": 0.0, "mf1_std": 0.0, "n_test": 10}


def _summary(**rows: tuple[float, float]) -> dict:
    s = {m: _row(*v) for m, v in rows.items()}
    s["setup"] = {"n_train": 20, "classes": ["a", "b"], "bands": ["x"], "frames": 5}
    return s


def test_target_needs_the_best_mf1_and_oa_within_the_margin() -> None:
    assert report.target(_summary(agrifm=(0.90, 0.80), random_forest=(0.904, 0.79), ltae=(0.85, 0.80))).startswith("yes")
    assert report.target(_summary(agrifm=(0.90, 0.80), random_forest=(0.906, 0.70))).startswith("no (OA -0.0060")
    assert report.target(_summary(agrifm=(0.95, 0.80), ltae=(0.90, 0.801))).startswith("no (OA +0.0500, mF1 -0.0010")


def test_extra_columns_are_shown_but_never_bold_or_the_reference() -> None:
    s = _summary(agrifm=(0.90, 0.80), random_forest=(0.85, 0.75), temporal_cnn_pooled=(0.99, 0.99),
                 agrifm_supervised=(0.95, 0.95))
    table = report.single_table([("toy", s)])
    assert "AgriFM supervised (extra)" in table and "0.9500 ± 0.0000 / 0.9500 ± 0.0000" in table
    assert "**0.9000 ± 0.0000** / **0.8000 ± 0.0000**" in table  # AgriFM the best of the counted models
    assert report.target(s).startswith("yes")
