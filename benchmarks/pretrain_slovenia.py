"""Pre-training on real data, then transfer: does the encoder learn anything, and does it help?

1. Shards from the eo-learn Slovenia patch (S2 NDVI, 68 dates, cloud mask, land-use raster):
   8-px chips every 4 px, 4-px cells, one sample per chip and year (all frames kept, clouds as
   gaps), spatial train/validation split on 32-px blocks.
2. Pre-training (``agrifm pretrain``, CPU, a small chip-and-pixel model, see CONFIG) three times:
   with the published L1 loss alone, with L1 + soft cross-entropy (``--ce-weight 1``), and with
   the cross-entropy fading out over the first quarter of the run so that it ends on L1 alone
   (``--ce-weight 1 --ce-decay STEPS/4``; see LOSSES). Held-out L1
   of the validation fractions against the trivial baseline (the mean training fractions) *and*
   the L1-optimal constant (the per-class median), plus the Pearson r of predicted vs true
   forest/grassland fractions, which a constant prediction cannot fake.
3. Fine-tuning on a small labelled set of a different place and sensor - Mato Grosso MOD13Q1
   NDVI pixel series (9 crop/land-use classes) - from scratch and from each pre-trained encoder
   (``encoder_published.pth``), same recipe and training subset per seed, grouped hold-out test.

    .venv/bin/python benchmarks/pretrain_slovenia.py [--steps 1200] [--seeds 0 1 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SLOVENIA = DATA / "eolearn_slovenia"
MATO_GROSSO = DATA / "mato_grosso_modis" / "samples" / "mato_grosso_train.csv"
FRAMES = 16
# Pre-training runs: name -> (--ce-weight, --ce-decay as a fraction of the steps).
LOSSES = {"l1": (0.0, 0.0), "l1+ce": (1.0, 0.0), "ce>l1": (1.0, 0.25)}
ARMS = {"scratch": None, "pretrained (L1)": "l1", "pretrained (L1+CE)": "l1+ce",
        "pretrained (CE->L1)": "ce>l1"}  # fine-tuning arm -> pre-training run

# Works for 8-px chips and 1x1-px series alike: 1x1 spatial patches and no spatial merging, so a
# pixel series goes through exactly the computation it had inside a chip, minus the neighbours
# (3-D windows of 8 frames x 4 x 4 px are clipped to the input; merging halves only time).
CONFIG = {
    "preset": "small", "patch_size": [2, 1, 1], "embed_dim": 32, "depths": [2, 2], "num_heads": [2, 4],
    "window_size": [8, 4, 4], "downsample_steps": [[2, 1, 1]], "merge_pad": "minimal", "drop_path_rate": 0.1,
}


def build_shards(out: Path) -> dict[str, Any]:
    """Train/val shards of the Slovenia patch (see the module docstring)."""
    from agrifm.pretrain.build import build_pretrain_shards

    return build_pretrain_shards(
        {"NDVI": str(SLOVENIA / "NDVI.tif")}, str(SLOVENIA / "LULC.tif"), str(out),
        masks={"NDVI": str(SLOVENIA / "CLM.tif")}, classes="eolearn_lulc", chip_size={"NDVI": 8},
        cell_size={"NDVI": 4}, stride={"NDVI": 4}, val_fraction=0.3, split_block=32, samples_per_shard=32,
        keep_empty_frames=True, min_frames=FRAMES, seed=0, overwrite=True, progress=False,
    )


def pretrain(shards: Path, run: Path, a: argparse.Namespace, ce_weight: float, ce_decay: int = 0) -> dict[str, Any]:
    from agrifm.pretrain.cli import parse_args
    from agrifm.pretrain.cli import run as run_pretraining

    config = run.parent / "model.json"
    config.write_text(json.dumps(CONFIG))
    argv = [
        "--data", str(shards / "train"), "--val-data", str(shards / "val"), "--out", str(run), "--model", str(config),
        "--max-steps", str(a.steps), "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "25",
        "--ema-momentum", "0.99", "--teacher-weight", "0.2", "--ce-weight", str(ce_weight), "--ce-decay", str(ce_decay), "--val-every", "50",
        "--log-every", "10", "--workers", "1", "--shuffle-buffer", "256", "--frames", str(FRAMES), "--overwrite", "--quiet",
    ]
    started = time.time()
    summary = run_pretraining(parse_args(argv))
    summary["wall_s"] = round(time.time() - started, 1)
    return summary


def _cells(model: Any, dirs: Path, source: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, targets) of every valid cell, (cells, K); predictions None-free only with a model."""
    from torch.utils.data import DataLoader, default_collate

    from agrifm.pretrain.task import predict_fractions, shard_dataset

    preds, targets = [], []
    with torch.no_grad():
        for b in DataLoader(shard_dataset(dirs, source, FRAMES), batch_size=64, collate_fn=default_collate):
            keep = b["frac_valid"]
            targets.append(b["fractions"].permute(0, 2, 3, 1)[keep])
            if model is not None:
                preds.append(predict_fractions(model, {**b, "source": "NDVI"}).permute(0, 2, 3, 1)[keep])
    return (torch.cat(preds) if preds else None), torch.cat(targets)


def heldout(shards: Path, run: Path) -> dict[str, Any]:
    """Validation L1 (per cell, 0..2) of the model and of constant baselines, and how well the model
    ranks cells (Pearson r of predicted vs true fraction) for the two main classes."""
    from agrifm.pretrain.model import load_pretrain_model

    model = load_pretrain_model(run / "model.safetensors")
    source, names = model.meta.sources["NDVI"], model.meta.class_names
    _, train_t = _cells(None, shards / "train" / "NDVI", source)
    pred, val_t = _cells(model, shards / "val" / "NDVI", source)

    def l1(p: torch.Tensor) -> float:
        return float((p - val_t).abs().sum(1).mean())

    def r(k: int) -> float:
        return float(np.corrcoef(pred[:, k].numpy(), val_t[:, k].numpy())[0, 1]) if pred[:, k].std() > 1e-6 else 0.0

    mean, median = train_t.mean(0), train_t.median(0).values
    return {
        "model_l1": l1(pred),
        "mean_fraction_baseline_l1": l1(mean.expand_as(val_t)),
        "median_baseline_l1": l1(median.expand_as(val_t)),  # the L1-optimal constant
        "pearson_r": {names[k]: r(k) for k in (1, 3)},  # forest, grassland
        "prediction_std": {names[k]: float(pred[:, k].std()) for k in (1, 3)},
        "val_cells": int(len(val_t)),
        "train_mean_fractions": dict(zip(names, np.round(mean.numpy(), 4).tolist())),
    }


def finetune_split(seed: int, n_train: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """The table, ``n_train`` training series drawn from the grouped 70 % part, the 30 % test part."""
    from agrifm.data.tables import grouped_split, read_table

    table = read_table(MATO_GROSSO, bands=["NDVI"])
    pool, test = grouped_split(table, (0.7, 0.3), seed=0)
    train = np.sort(np.random.default_rng(seed).choice(pool, size=min(n_train, len(pool)), replace=False))
    return table, train, test


def finetune(table: Any, train: np.ndarray, test: np.ndarray, run: Path, *, init: Path | None, seed: int,
             epochs: int) -> dict[str, float]:
    """Fit the point classifier (from the encoder of run ``init``, or from scratch); OA and macro F1 on ``test``.

    ``run`` gives the model config and the NDVI normalisation, the same for every arm."""
    import lightning as L
    from torch.utils.data import DataLoader

    from agrifm.checkpoint import read_metadata
    from agrifm.data.datasets import TableDataset, collate
    from agrifm.tasks.classification import ClassificationTask
    from agrifm.tasks.metrics import metrics_from_confusion

    meta = read_metadata(run / "model.safetensors")
    source = meta.sources["NDVI"]  # the encoder's normalisation, for both arms
    model = {**{k: v for k, v in meta.model.to_dict().items() if k not in ("sources", "head", "num_classes")},
             "head_dropout": 0.1}
    L.seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(model=model, sources={"NDVI": source}, class_names=table.class_names, lr=1e-3,
                              weight_decay=0.05, warmup_steps=30, min_lr=1e-5,
                              init_checkpoint=str(init / "encoder_published.pth") if init else None)
    loader = DataLoader(TableDataset(table, source, train, frames=FRAMES, train=True, seed=seed), batch_size=16,
                        shuffle=True, drop_last=True, collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(task, loader)
    task.eval()
    k = len(table.class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for batch in DataLoader(TableDataset(table, source, test, frames=FRAMES), batch_size=256, collate_fn=collate):
            pred = task.model(batch["inputs"], batch["dates"]).argmax(1)
            np.add.at(cm, (batch["label"].numpy(), pred.numpy()), 1)
    m = metrics_from_confusion(cm, table.class_names)
    return {"oa": m["oa"], "mf1": m["mf1"]}


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +/- {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1200, help="pre-training steps (batch 16)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-series", type=int, default=150, help="labelled Mato Grosso series per fine-tuning run")
    p.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs")
    p.add_argument("--work", default=None, help="folder for shards and the run (default: a temporary one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a small shared CPU)")
    p.add_argument("--json", default=None, metavar="OUT")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for path in (SLOVENIA, MATO_GROSSO):
        if not path.exists():
            print(f"missing data: {path}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="agrifm-pretrain-") as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        shards = work / "shards"
        built = build_shards(shards)
        print(f"shards: {built['samples']}")
        result: dict[str, Any] = {"shards": built["samples"], "pretraining": {}, "heldout": {}, "finetune": []}
        runs = {name: work / f"run_{i}" for i, name in enumerate(LOSSES)}
        for name, (ce, decay) in LOSSES.items():
            summary = pretrain(shards, runs[name], a, ce, int(decay * a.steps))
            result["pretraining"][name] = {k: summary[k] for k in ("steps", "samples", "wall_s", "loss", "val_loss", "global_batch")}
            h = result["heldout"][name] = heldout(shards, runs[name])
            print(f"pre-training [{name}]: {summary['steps']} steps x 16 in {summary['wall_s']} s; held-out L1 (per cell, 0..2) "
                  f"model {h['model_l1']:.4f} vs mean training fractions {h['mean_fraction_baseline_l1']:.4f}, "
                  f"per-class median (L1-optimal constant) {h['median_baseline_l1']:.4f}; Pearson r forest "
                  f"{h['pearson_r']['forest']:.2f}, grassland {h['pearson_r']['grassland']:.2f} ({h['val_cells']} cells)")
        for seed in a.seeds:
            table, train, test = finetune_split(seed, a.train_series)
            row: dict[str, Any] = {"seed": seed, "train": int(len(train)), "test": int(len(test))}
            for arm, init in ARMS.items():
                t0 = time.time()
                row[arm] = finetune(table, train, test, runs["l1+ce"], init=runs[init] if init else None, seed=seed, epochs=a.epochs)
                row[arm]["wall_s"] = round(time.time() - t0, 1)
            result["finetune"].append(row)
            print(f"seed {seed}: {len(train)} train / {len(test)} test series - "
                  + "; ".join(f"{arm} OA {row[arm]['oa']:.3f} mF1 {row[arm]['mf1']:.3f}" for arm in ARMS))
    ft = result["finetune"]
    result["summary"] = {arm: {m: _mean_std([r[arm][m] for r in ft]) for m in ("oa", "mf1")} for arm in ARMS}
    result["environment"] = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                             "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                             "command": " ".join(["benchmarks/pretrain_slovenia.py", *(argv if argv is not None else sys.argv[1:])])}
    print(f"fine-tuning over {len(ft)} seeds (mean +/- std):")
    for arm in ARMS:
        print(f"  {arm:<22} OA {result['summary'][arm]['oa']}   macro F1 {result['summary'][arm]['mf1']}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
