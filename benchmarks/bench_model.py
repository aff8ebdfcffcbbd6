"""Model throughput: the exact (published) path against the fast path and the efficient decoder.

    .venv/bin/python benchmarks/bench_model.py [--device cpu|cuda] [--batch B] [--frames T] [--size S]
        [--precision fp32|bf16] [--compile] [--train] [--json OUT] [--repeats N] [--threads N] [--tcmalloc]

Published config (``--size`` sets img_size: out_size = size, feature_size = size // 16).
Defaults: CPU batch 1, 32x10x64x64, inference only unless ``--train``; CUDA batch 4,
32x10x256x256, inference and training. Variants run side by side, interleaved repeat by repeat
(so load from other processes hits all of them alike); each reports the median:
- ``exact``: the published computation (``set_attention('exact')``), fp32, eager: the reference;
- ``fast``: ``configure_fast_path`` at ``--precision`` (compiled with ``--compile``);
- ``exact_compiled`` (``--compile``): the exact path under ``torch.compile``, fp32;
- ``efficient_decoder``: the fast path with ``decoder='efficient'`` (fewer FLOPs: not equal outputs).
Peak memory: CUDA ``max_memory_allocated``; CPU the peak growth of resident anonymous memory
over two steps, sampled in a fresh process per variant. TFLOP/s use ``agrifm.commands.info.describe`` FLOPs (training = 3x forward).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from agrifm.models.agrifm import AgriFM
from agrifm.models.config import ModelConfig
from agrifm.models.fast import FastPath, configure_fast_path
from agrifm.models.presets import preset
from agrifm.runtime import cpu_description

# Dense (no sparsity) peak TFLOP/s from NVIDIA datasheets: (bf16 tensor core, fp32 non-tensor).
# Matched on torch.cuda.get_device_name(), most specific first.
PEAKS: list[tuple[str, float, float]] = [
    ("H200 NVL", 835.0, 60.0), ("H200", 989.0, 67.0),
    ("H100 NVL", 835.0, 60.0), ("H100 PCIe", 756.0, 51.0), ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5), ("L40S", 362.0, 91.6), ("L4", 121.0, 30.3), ("A10", 125.0, 31.2),
]


VARIANT_NAMES = ("exact", "fast", "exact_compiled", "efficient_decoder")


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for ``precision``; None when unknown (every CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp32 in PEAKS:
        if key in name:
            return bf16 if precision == "bf16" else fp32
    return None


def bench_config(size: int, frames: int, decoder: str = "fusion") -> ModelConfig:
    """The published config rescaled to ``size`` (out_size and feature_size follow) and ``frames``."""
    return preset("published", num_frames=frames, out_size=(size, size), feature_size=(size // 16, size // 16),
                  decoder=decoder)


def gflops_per_sample(cfg: ModelConfig, frames: int, size: int) -> float:
    from agrifm.commands.info import describe

    return describe(cfg, frames, size)[-1][2]


@dataclass
class Variant:
    """One model + how to call it; collects per-iteration timings and peak memory."""

    name: str
    model: AgriFM
    call: Callable[..., torch.Tensor]
    autocast: Callable[[], contextlib.AbstractContextManager]
    gflops: float
    times: dict[str, list[float]] = field(default_factory=lambda: {"infer": [], "train": []})
    peak_gib: dict[str, float] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None

    def step(self, phase: str, inputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor | None:
        """One inference call or one AdamW training step; returns the logits (inference)."""
        if phase == "infer":
            self.model.eval()
            with torch.no_grad():
                return self.call(inputs)
        self.model.train()
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=6e-5, weight_decay=5e-4)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.call(inputs).float(), target, ignore_index=-1)
        loss.backward()
        self.optimizer.step()
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_variants(args: argparse.Namespace, device: torch.device, only: str | None = None) -> list[Variant]:
    """exact, fast, (exact_compiled), efficient_decoder — same seed, so exact and fast share weights."""
    names = [n for n in VARIANT_NAMES if n != "exact_compiled" or args.compile]
    flops = {"fusion": None, "efficient": None}
    out = []
    for name in names if only is None else [only]:
        decoder = "efficient" if name == "efficient_decoder" else "fusion"
        torch.manual_seed(0)
        model = AgriFM(bench_config(args.size, args.frames, decoder))
        model.check_finite = False  # one device sync per call: not part of the model's cost
        if flops[decoder] is None and not args.no_flops:
            flops[decoder] = gflops_per_sample(model.config, args.frames, args.size)
        gf = flops[decoder] or 0.0
        if name == "exact":
            out.append(Variant(name, model.to(device).set_attention("exact"), model, contextlib.nullcontext, gf))
            continue
        exact = name == "exact_compiled"
        fast: FastPath = configure_fast_path(model, device, "fp32" if exact else args.precision, compile=args.compile,
                                             attention="exact" if exact else "auto")
        out.append(Variant(name, model, fast, fast.autocast, gf))
    return out


def make_inputs(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.frames, 10, args.size, args.size, generator=g)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), generator=g)
    return {"S2": x.to(device)}, y.to(device)


def run_phase(variants: list[Variant], phase: str, args: argparse.Namespace, device: torch.device,
              inputs: dict[str, torch.Tensor], target: torch.Tensor) -> None:
    """Warm up each variant, then time them interleaved: A B C, A B C, ..."""
    for v in variants:
        for _ in range(args.warmup):
            v.step(phase, inputs, target)
    for _ in range(args.repeats):
        for v in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            v.step(phase, inputs, target)
            _sync(device)
            v.times[phase].append(time.perf_counter() - t0)
            if device.type == "cuda":
                v.peak_gib[phase] = max(v.peak_gib.get(phase, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)


def agreement(variants: list[Variant], inputs: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, Any]:
    """Fast vs exact logits on the benchmark input: max |diff| (relative to max |logit|) and argmax
    agreement among pixels whose fp32 top-two gap exceeds 0.05 (the bf16 rule)."""
    by = {v.name: v for v in variants}
    ref, fast = (by[n].step("infer", inputs, target).float() for n in ("exact", "fast"))
    top2 = ref.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 0.05
    same = (ref.argmax(1) == fast.argmax(1))[confident]
    return {"max_abs_diff": (fast - ref).abs().max().item(), "max_abs_logit": ref.abs().max().item(),
            "argmax_agree_confident": same.float().mean().item() if same.numel() else 1.0}


def _anon_rss_bytes() -> int:
    """Resident anonymous memory (tensors, heaps), not file-backed library pages."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def probe_cpu_memory(args: argparse.Namespace, name: str, phase: str) -> float:
    """Peak growth (GiB) of resident anonymous memory over two steps of ``name``, sampled every
    millisecond in this (fresh) process: activations, workspaces, caches and optimiser state."""
    device = torch.device("cpu")
    (v,) = build_variants(args, device, only=name)
    inputs, target = make_inputs(args, device)
    before = peak = _anon_rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _anon_rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(2):
        v.step(phase, inputs, target)
    done.set()
    sampler.join()
    return (max(peak, _anon_rss_bytes()) - before) / 2**30


def cpu_memory(args: argparse.Namespace, name: str, phase: str) -> float | None:
    """:func:`probe_cpu_memory` in a subprocess (peak RSS is a per-process high-water mark)."""
    cmd = [sys.executable, __file__, "--device", "cpu", "--batch", str(args.batch), "--frames", str(args.frames),
           "--size", str(args.size), "--precision", args.precision, "--probe-memory", f"{name}:{phase}", "--no-flops"]
    cmd += (["--compile"] if args.compile else []) + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"memory probe {name}:{phase} failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None


def summarise(v: Variant, args: argparse.Namespace, device: torch.device, peak: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"gflops_per_sample": v.gflops}
    for phase, key in (("infer", "infer_samples_per_s"), ("train", "train_samples_per_s")):
        if v.times[phase]:
            sps = args.batch / statistics.median(v.times[phase])
            row[key] = sps
            achieved = v.gflops * (3 if phase == "train" else 1) * sps / 1e3
            row[f"{phase}_tflops"] = achieved
            if peak:
                row[f"{phase}_peak_fraction"] = achieved / peak
            row[f"{phase}_times_s"] = v.times[phase]
    if v.peak_gib:
        row["peak_mem_gib"] = max(v.peak_gib.values())
        row["peak_mem_gib_by_phase"] = dict(v.peak_gib)
    return row


def markdown(results: dict[str, Any], phases: list[str]) -> str:
    """The README table: samples/s and ratio to exact per phase, peak memory, TFLOP/s (% of peak)."""
    lines = ["| variant | " + " | ".join(f"{p} samples/s | {p} × exact" for p in phases) + " | peak mem GiB | TFLOP/s |",
             "|---" * (3 + 2 * len(phases)) + "|"]
    for name in VARIANT_NAMES:
        r = results.get(name)
        if r is None:
            continue
        cells = []
        for p in phases:
            sps, ref = r.get(f"{p}_samples_per_s"), results["exact"].get(f"{p}_samples_per_s")
            cells += [f"{sps:.3g}" if sps else "-", f"{sps / ref:.2f}" if sps and ref else "-"]
        mem = r.get("peak_mem_gib")
        tflops = " / ".join(f"{r[f'{p}_tflops']:.3g}" + (f" ({100 * r[f'{p}_peak_fraction']:.0f} %)" if f"{p}_peak_fraction" in r else "")
                            for p in phases if f"{p}_tflops" in r)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if mem is None else f'{mem:.2f}'} | {tflops} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 1 on CPU, 4 on CUDA")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=None, help="img_size; default: 64 on CPU, 256 on CUDA")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="of the fast variants")
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path; adds exact_compiled")
    ap.add_argument("--train", action="store_true", help="also time AdamW training steps (always on CUDA)")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--tcmalloc", action="store_true", help="re-run under tcmalloc (LD_PRELOAD) when installed")
    ap.add_argument("--no-memory", action="store_true", help="skip the CPU memory probes (one process each)")
    ap.add_argument("--no-flops", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = args.batch or (4 if cuda else 1)
    args.size = args.size or (256 if cuda else 64)
    args.train = args.train or cuda
    return args


def _reexec_with_tcmalloc() -> None:
    from agrifm.cli import _TCMALLOC

    lib = next((p for p in _TCMALLOC if os.path.exists(p)), None)
    if lib is None:
        print("tcmalloc not found (Debian: apt-get install libtcmalloc-minimal4); running without", file=sys.stderr)
        return
    env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [lib, os.environ.get("LD_PRELOAD", "")])))
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tcmalloc and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        _reexec_with_tcmalloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe_memory:
        name, phase = args.probe_memory.split(":")
        print(probe_cpu_memory(args, name, phase))
        return 0
    device = torch.device(args.device)
    variants = build_variants(args, device)
    device = variants[1].call.device  # the fast path may have fallen back (e.g. no CUDA)
    inputs, target = make_inputs(args, device)
    phases = ["infer"] + (["train"] if args.train else [])
    check = agreement(variants, inputs, target)
    for phase in phases:
        run_phase(variants, phase, args, device, inputs, target)
    if device.type == "cpu" and not args.no_memory:
        for v in variants:
            for phase in phases:
                mem = cpu_memory(args, v.name, phase)
                if mem is not None:
                    v.peak_gib[phase] = mem
    results: dict[str, Any] = {
        v.name: summarise(v, args, device, device_peak_tflops(device, "fp32" if v.name.startswith("exact") else args.precision))
        for v in variants
    }
    results["fast"]["agreement_with_exact"] = check
    results.update({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_description()}, {torch.get_num_threads()} threads",
        "precision": args.precision, "gflops_per_sample": variants[0].gflops, "batch": args.batch,
        "input": f"{args.frames}x10x{args.size}x{args.size}", "compile": args.compile,
        "allocator": "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "default",
        "torch": torch.__version__, "date": _dt.date.today().isoformat(), "repeats": args.repeats,
    })
    print(f"{results['device']}, torch {torch.__version__}, {results['input']} batch {args.batch}, fast path "
          f"{args.precision}{' compiled' if args.compile else ''}, allocator {results['allocator']}, "
          f"{variants[0].gflops:.1f} GFLOP/sample (exact)")
    print(markdown(results, phases))
    print(f"fast vs exact logits: max |diff| {check['max_abs_diff']:.3g} (max |logit| {check['max_abs_logit']:.3g}), "
          f"argmax agreement where the top-two gap > 0.05: {100 * check['argmax_agree_confident']:.3f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
