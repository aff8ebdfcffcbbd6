"""Pre-training throughput (samples/s) per source, and a labelled projection for 25 M samples.

One *training step* as ``agrifm pretrain`` runs it on synthetic inputs (data loading excluded):
student forward + backward + AdamW, EMA-teacher forward, EMA update; 16 frames; the documented
chip sizes (S2 10 bands 128 px, Landsat/HLSL30 6 bands 128 px, MODIS 7 bands 32 px); the
published backbone (``base-vt``) unless ``--preset``. Measured on CPU with 1 process and with 2
DDP processes (gloo), each with ``--threads`` (cores / 2) threads, so 2 processes use all cores
(scaling 1 -> 2), and per GPU (bf16 autocast) when one is present.
FLOPs per sample are counted on the meta device (no compute).

The projection for 25 M samples x 1 epoch on 8 and 64 GPUs is **not a measurement**: it is the
measured per-GPU rate (or, without a GPU here, FLOPs per sample / (assumed GPU TFLOP/s x assumed
MFU)) times the GPU count times an assumed scaling efficiency, for an assumed source mix;
the input bandwidth those rates need is printed too (data loading is not in the step).

    .venv/bin/python benchmarks/pretrain_throughput.py [--preset small] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

SOURCES = {"S2": (10, 128), "HLSL30": (6, 128), "Modis": (7, 32)}  # bands, chip px
CELLS = 8  # fraction grid per side (chip / 8 px cells)


def build(preset_name: str, device: str | torch.device = "cpu") -> Any:
    from agrifm.models.presets import preset
    from agrifm.pretrain.model import PretrainModel

    cfg = preset(preset_name, sources={s: b for s, (b, _) in SOURCES.items()}, head="fraction", num_classes=8,
                 feature_fusion="mean", drop_path_rate=0.0)
    with torch.device(device):
        return PretrainModel(cfg)


def flops_per_sample(preset_name: str, source: str, frames: int) -> float:
    """Training FLOPs of one sample: student forward + backward + teacher forward (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(preset_name, "meta")
    bands, px = SOURCES[source]
    x = torch.empty(1, frames, bands, px, px, device="meta")
    with FlopCounterMode(display=False) as fc:
        model(source, x, None, (CELLS, CELLS)).sum().backward()
        with torch.no_grad():
            model(source, x, None, (CELLS, CELLS))
    return float(fc.get_total_flops())


def _step_fn(model: Any, raw: Any, teacher: Any, opt: Any, source: str, batch: int, frames: int, device: torch.device,
             autocast: bool) -> Any:
    """``model`` may be DDP-wrapped; ``raw`` is the module itself (for the EMA)."""
    from agrifm.pretrain.model import ema_update, fraction_l1

    bands, px = SOURCES[source]
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, frames, bands, px, px, generator=g).to(device)
    frac = torch.rand(batch, 8, CELLS, CELLS, generator=g).softmax(1).to(device)
    valid = torch.ones(batch, CELLS, CELLS, dtype=torch.bool, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                target = 0.8 * frac + 0.2 * teacher(source, x, None, (CELLS, CELLS)).float()
            l1, n = fraction_l1(model(source, x, None, (CELLS, CELLS)), target, valid)
        (l1 / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(teacher, raw, 0.999)

    return step


def measure(preset_name: str, source: str, *, batch: int, frames: int, steps: int, device: str = "cpu",
            checkpointing: bool = False, ddp: bool = False) -> float:
    """Samples/s of this process (after one warm-up step)."""
    import copy

    dev = torch.device(device)
    raw = build(preset_name).to(dev).set_checkpointing(checkpointing)
    teacher = copy.deepcopy(raw).requires_grad_(False).eval()
    model = torch.nn.parallel.DistributedDataParallel(raw, find_unused_parameters=True) if ddp else raw
    opt = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    step = _step_fn(model, raw, teacher, opt, source, batch, frames, dev, autocast=dev.type == "cuda")
    step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return batch * steps / (time.perf_counter() - t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, threads: int, kw: dict[str, Any], out: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out.put((rank, measure(**kw, ddp=True)))
    finally:
        dist.destroy_process_group()


def measure_cpu_ddp(world: int, threads: int, **kw: Any) -> float:
    """Total samples/s of ``world`` DDP processes (gloo) with ``threads`` each."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, world, port, threads, kw, q)) for r in range(world)]
    for p in procs:
        p.start()
    rates = [q.get(timeout=3600)[1] for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def bytes_per_sample(source: str, frames: int) -> int:
    """Stored bytes of one sample's ``x`` as float16 shards hold it."""
    bands, px = SOURCES[source]
    return frames * bands * px * px * 2


def project(rate_per_gpu: dict[str, float], mix: dict[str, float], samples: float, gpus: int, efficiency: float) -> float:
    """Hours for ``samples`` split by ``mix`` at ``rate_per_gpu`` x ``gpus`` x ``efficiency``."""
    seconds = sum(samples * share / (rate_per_gpu[s] * gpus * efficiency) for s, share in mix.items())
    return seconds / 3600


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base-vt", help="model preset (base-vt: the published backbone)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--cpu-batch", type=int, default=1)
    p.add_argument("--cpu-steps", type=int, default=2)
    p.add_argument("--gpu-batch", type=int, default=8)
    p.add_argument("--gpu-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads per CPU process (default: cores / 2)")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-process CPU measurement")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in the measured steps")
    p.add_argument("--samples", type=float, default=25e6, help="projection: samples in one epoch")
    p.add_argument("--mix", default="S2=1,HLSL30=1,Modis=1", help="projection: source shares (assumption)")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="projection without a GPU: dense bf16 peak (H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.25, help="projection without a GPU: assumed model FLOP utilisation")
    p.add_argument("--efficiency", type=float, default=0.9, help="projection: assumed multi-GPU scaling efficiency")
    p.add_argument("--json", default=None, metavar="OUT")
    a = p.parse_args(argv)

    cores = os.cpu_count() or 1
    threads = a.threads or max(1, cores // 2)
    torch.set_num_threads(threads)
    mix = {k: float(v) for k, v in (kv.split("=") for kv in a.mix.split(","))}
    mix = {k: v for k, v in mix.items() if k in a.sources}
    mix = {k: v / sum(mix.values()) for k, v in mix.items()}
    rows: list[dict[str, Any]] = []
    gpu = torch.cuda.is_available()
    for src in a.sources:
        kw = dict(preset_name=a.preset, source=src, frames=a.frames, checkpointing=a.checkpointing)
        row: dict[str, Any] = {"source": src, "bands": SOURCES[src][0], "chip": SOURCES[src][1],
                               "gflop_per_sample": flops_per_sample(a.preset, src, a.frames) / 1e9}
        row["cpu_1proc"] = measure(**kw, batch=a.cpu_batch, steps=a.cpu_steps)
        if not a.no_ddp:
            row["cpu_2proc_ddp"] = measure_cpu_ddp(2, threads, **kw, batch=a.cpu_batch, steps=a.cpu_steps)
            row["cpu_scaling_efficiency"] = row["cpu_2proc_ddp"] / (2 * row["cpu_1proc"])
        if gpu:
            row["gpu"] = measure(**kw, batch=a.gpu_batch, steps=a.gpu_steps, device="cuda")
        rows.append(row)
        print(f"{src}: {row}", file=sys.stderr)

    if gpu:
        per_gpu = {r["source"]: r["gpu"] for r in rows}
        basis = f"measured on {torch.cuda.get_device_name(0)} (batch {a.gpu_batch}, bf16 autocast)"
    else:
        per_gpu = {r["source"]: a.gpu_tflops * 1e12 * a.mfu / (r["gflop_per_sample"] * 1e9) for r in rows}
        basis = (f"no GPU here: FLOPs per sample / ({a.gpu_tflops:g} TFLOP/s x MFU {a.mfu:g}) - an assumption, "
                 "and a poor one for small models (not FLOP-bound)")
    projection = {f"{n}_gpus_hours": project(per_gpu, mix, a.samples, n, a.efficiency) for n in (8, 64)}
    cpu = f"CPU ({platform.processor() or platform.machine()}, {cores} cores, {threads} torch thread(s) per process)"
    device = torch.cuda.get_device_name(0) if gpu else cpu
    result = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "device": device, "preset": a.preset,
              "frames": a.frames, "torch": torch.__version__, "rows": rows, "per_gpu_samples_s": per_gpu,
              "projection": {**projection, "samples": a.samples, "mix": mix, "efficiency": a.efficiency, "basis": basis}}

    print(f"\npre-training throughput - {a.preset}, {a.frames} frames, {device}, {result['date']}")
    print("  (one training step: student fwd+bwd+AdamW, teacher fwd, EMA; synthetic inputs, no data loading)")
    head = f"  {'source':<8}{'chip':>10}{'GFLOP/sample':>14}{'CPU 1 proc':>12}{'CPU 2 proc':>12}{'eff.':>6}"
    head += f"{'GPU':>10}" if gpu else ""
    print(head + "   [samples/s]")
    for r in rows:
        chip = f"{r['bands']}x{r['chip']}px"
        line = f"  {r['source']:<8}{chip:>10}{r['gflop_per_sample']:>14.1f}{r['cpu_1proc']:>12.3f}"
        line += f"{r.get('cpu_2proc_ddp', float('nan')):>12.3f}{r.get('cpu_scaling_efficiency', float('nan')):>6.2f}"
        line += f"{r['gpu']:>10.1f}" if gpu else ""
        print(line)
    if not a.no_ddp:
        print(f"  CPU 2 proc = 2 DDP processes (gloo) x {threads} thread(s); eff. = 2-process rate / (2 x 1-process rate)")
    print(f"\nPROJECTION (not measured) of {a.samples:.3g} samples x 1 epoch, mix {', '.join(f'{k} {v:.0%}' for k, v in mix.items())},"
          f" scaling efficiency {a.efficiency:g}:")
    print(f"  per-GPU rate basis: {basis}")
    print("  " + ", ".join(f"{s} {v:.0f} samples/s" for s, v in per_gpu.items()))
    print(f"  8 GPUs: {projection['8_gpus_hours']:.1f} h    64 GPUs: {projection['64_gpus_hours']:.1f} h")
    io = {s: r * bytes_per_sample(s, a.frames) / 1e9 for s, r in per_gpu.items()}
    result["projection"]["input_gb_s_per_gpu"] = io
    print("  input the loaders must decode per GPU at these rates (float16, 16 frames, a lower bound): "
          + ", ".join(f"{s} {v:.2f} GB/s" for s, v in io.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
