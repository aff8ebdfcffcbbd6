#!/usr/bin/env python
"""Markdown tables of ``accuracy.py`` JSON summaries (docs/baselines.md), with AgriFM's target.

    python benchmarks/baselines_report.py "Mato Grosso=runs/mg.json" "Belgium=runs/belgium.json" ...

Prints the single-model table (mean ± std over seeds, OA / mF1; bold: the best single model of
a column pair), whether single-model AgriFM meets the target of issue #18 (mF1 at least the best
single baseline's, OA within 0.005 of it) and the early-season table of each summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BASELINES = ("random_forest", "temporal_cnn", "ltae")
EXTRAS = ("temporal_cnn_pooled", "agrifm_supervised")  # shown, never the best of a column
COLUMNS = ("agrifm", *BASELINES, *EXTRAS)
TITLES = {"agrifm": "AgriFM", "random_forest": "Random Forest", "temporal_cnn": "TempCNN", "ltae": "L-TAE",
          "temporal_cnn_pooled": "pooled CNN (extra)", "agrifm_supervised": "AgriFM supervised (extra)"}
OA_MARGIN = 0.005


def target(s: dict) -> str:
    """'yes' or 'no (OA ±x, mF1 ±y vs the best baseline)' for single-model AgriFM."""
    best_oa = max(s[m]["oa"] for m in BASELINES if m in s)
    best_mf1 = max(s[m]["mf1"] for m in BASELINES if m in s)
    d_oa, d_mf1 = s["agrifm"]["oa"] - best_oa, s["agrifm"]["mf1"] - best_mf1
    ok = d_mf1 >= 0 and d_oa >= -OA_MARGIN
    return f"{'yes' if ok else 'no'} (OA {d_oa:+.4f}, mF1 {d_mf1:+.4f})"


def _cell(s: dict, m: str, best: dict[str, str]) -> str:
    if m not in s:
        return "-"
    r = s[m]
    parts = []
    for key in ("oa", "mf1"):
        text = f"{r[key]:.4f} ± {r[f'{key}_std']:.4f}"
        parts.append(f"**{text}**" if best[key] == m else text)
    return " / ".join(parts)


def single_table(named: list[tuple[str, dict]]) -> str:
    head = "| table | train / test, classes, bands × dates | " + " | ".join(TITLES[m] for m in COLUMNS) + \
        " | AgriFM target met? (vs the best baseline) |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, s in named:
        singles = [m for m in COLUMNS if m in s and m not in EXTRAS]
        best = {k: max(singles, key=lambda m: s[m][k]) for k in ("oa", "mf1")}
        st = s["setup"]
        shape = (f"{st['n_train']} / {s['agrifm']['n_test']}, {len(st['classes'])}, "
                 f"{len(st['bands'])} × {st['frames']}")
        lines.append(f"| {name} | {shape} | " + " | ".join(_cell(s, m, best) for m in COLUMNS) + f" | {target(s)} |")
    return "\n".join(lines)


def early_table(name: str, s: dict) -> str:
    es = s.get("early_season")
    if not es:
        return ""
    fr = list(es["agrifm"])
    lines = [f"Early season, {name} (OA / mF1; each model trained with the same cuts):", "",
             "| model | " + " | ".join(f"first {float(f):.0%}" for f in fr) + " |", "|" + "---|" * (len(fr) + 1)]
    for m in es:
        if not m.endswith("_ensemble"):
            label = "agrifm (the supervised model)" if m == "agrifm" and "agrifm_supervised" in s else m
            lines.append(f"| {label} | " + " | ".join(f"{es[m][f]['oa']:.4f} / {es[m][f]['mf1']:.4f}" for f in fr) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summaries", nargs="+", metavar="NAME=JSON", help="a table's name and its accuracy.py --json")
    args = ap.parse_args(argv)
    named = []
    for item in args.summaries:
        name, sep, path = item.rpartition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"{item!r}: expected NAME=JSON with an existing JSON file")
        named.append((name, json.loads(Path(path).read_text())))
    print(single_table(named))
    for name, s in named:
        text = early_table(name, s)
        if text:
            print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
