"""``agrifm parity``: run the model on the published-model fixtures and report agreement.

Each fixture holds a published config, random published weights, inputs and the published
code's outputs (logits and every stage's features).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from agrifm.errors import AgrifmError

__all__ = ["run_case", "main", "CaseResult", "find_fixtures"]


@dataclass
class CaseResult:
    case: str
    impl: str
    max_abs: dict[str, float]
    atol: float

    @property
    def ok(self) -> bool:
        return all(v <= self.atol for v in self.max_abs.values())


def find_fixtures(folder: str | Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.json") if p.with_suffix(".safetensors").exists())


def run_case(json_path: str | Path, impl: str = "exact") -> CaseResult:
    """Build from the fixture's config, load its weights, compare logits and features."""
    from safetensors.torch import load_file

    from agrifm.compat import load_official_checkpoint, model_from_official_config

    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text())
        tensors = load_file(str(json_path.with_suffix(".safetensors")))
    except (OSError, ValueError, json.JSONDecodeError) as exc:  # safetensors raises its own error types too
        raise AgrifmError(f"{json_path}: not a readable fixture ({exc})") from None
    except Exception as exc:
        raise AgrifmError(f"{json_path.with_suffix('.safetensors')}: not a readable fixture ({exc})") from None
    if not isinstance(meta, dict) or "model" not in meta or "output/logits" not in tensors:
        raise AgrifmError(f"{json_path}: a fixture needs a 'model' config and output/logits")
    weights = {k[len("state_dict/"):]: v for k, v in tensors.items() if k.startswith("state_dict/")}
    inputs = {k[len("input/"):]: v.float() for k, v in tensors.items() if k.startswith("input/")}
    try:
        model = model_from_official_config(meta["model"]).eval().set_attention(impl)
        load_official_checkpoint(model, weights)
    except AgrifmError as exc:
        raise AgrifmError(f"{json_path}: {exc}") from None
    with torch.no_grad():
        logits = model(inputs)
        feats = model.forward_features(inputs)
    errs = {"logits": (logits - tensors["output/logits"]).abs().max().item()}
    for src, f in feats.items():
        errs[f"{src}/encoder_features"] = (f["encoder_features"] - tensors[f"features/{src}/encoder_features"]).abs().max().item()
        for i, x in enumerate(f["features_list"]):
            ref = tensors[f"features/{src}/features_list/{i}"]
            if x.shape != ref.shape:
                raise AssertionError(f"{json_path.stem}: {src} features_list[{i}] shape {tuple(x.shape)} != {tuple(ref.shape)}")
            errs[f"{src}/features_list/{i}"] = (x - ref).abs().max().item()
    return CaseResult(meta.get("case", json_path.stem), impl, errs, float(meta.get("atol", 1e-4)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agrifm parity", description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default="../shared/fixtures", help="folder of <case>.json + <case>.safetensors")
    args = ap.parse_args(argv)
    cases = find_fixtures(args.fixtures)
    if not Path(args.fixtures).is_dir():
        raise AgrifmError(f"{args.fixtures}: no such folder (pass --fixtures DIR with <case>.json + <case>.safetensors)")
    if not cases:
        raise AgrifmError(f"{args.fixtures}: no fixtures (<case>.json beside <case>.safetensors)")
    ok = True
    for path in cases:
        for impl in ("exact", "sdpa"):
            r = run_case(path, impl)
            ok &= r.ok
            worst = max(r.max_abs, key=r.max_abs.get)
            print(f"{'PASS' if r.ok else 'FAIL'}  {r.case:<30} {impl:<6} max |diff| {r.max_abs[worst]:.2e} "
                  f"({worst}; {len(r.max_abs)} tensors, atol {r.atol:g})")
    return 0 if ok else 1
