#!/usr/bin/env python3
"""Benchmark the real restoration pipeline, stage by stage, on a synthetic clip.

The clip is written to a temporary file and restored with `seedvr.pipeline.restore_file`, exactly as the
CLI and the worker do, so the numbers include decoding, VAE encode, DiT, VAE decode, colour fix and
encoding. Models come from our real configs (3B or 7B) with random weights (speed does not depend on
weight values, so no checkpoint is needed), from a checkpoint folder, or are the tiny fixture models for
a CPU smoke run.

Reports per stage the wall time (summed over windows), output frames per second, the peak GPU memory
of each stage (or the process's peak RSS on the CPU), and the DiT's achieved TFLOP/s computed from the
model's shapes (matmuls and the attention core, as in shared/spec/seedvr2.md §9).

Under `torchrun --nproc-per-node N ... --sp-size N` the ranks restore one job together
(`seedvr.parallel.restore_file`, as the CLI does) and rank 0 reports, with every rank's peak memory;
scripts/bench_parallel.py times such a run against one process.

Examples:
  python scripts/bench.py --model tiny --frames 9 --in-size 64x48 --res 96x64
  python scripts/bench.py --model 3b --device cuda --dtype bf16 --frames 21 --in-size 640x360 --res 1280x720
  torchrun --nproc-per-node 2 scripts/bench.py --model 3b --dit-layers 4 --device cpu --vae-tile 0 --sp-size 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seedvr.models import build_dit, build_vae  # noqa: E402
from seedvr.models.compiled import compile_regions  # noqa: E402
from seedvr.models.layers import cast_model  # noqa: E402
from seedvr.models.nadit import NaDiTParams, model_frequencies  # noqa: E402
from seedvr.models.windows import make_windows  # noqa: E402
from seedvr.pipeline import RestorationModels, RestoreOptions, make_plan  # noqa: E402
from seedvr.pipeline.temporal import padded_length, plan_windows  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
TEXT_TOKENS = 58  # pos_emb.pt
STAGES = ("decode", "preprocess", "encode", "dit", "vae_decode", "postprocess", "write")
RANDOM_POOL = 1 << 16  # distinct normal values behind random_init_
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def dit_flops(p: NaDiTParams, latent: tuple[int, int, int], txt_len: int) -> dict[str, float]:
    """FLOPs (2 x multiply-adds) of one DiT forward over a latent (T', h, w), per kind of work."""
    t, h, w = latent[0], latent[1] // p.patch, latent[2] // p.patch
    vid, txt, d, inner = t * h * w, txt_len, p.vid_dim, p.heads * p.head_dim
    if p.mlp == "swiglu":
        hidden, matrices = 256 * math.ceil(int(2 * d * p.expand_ratio / 3) / 256), 3
    else:
        hidden, matrices = d * p.expand_ratio, 2
    flops = {"qkv": 0.0, "attention": 0.0, "proj_out": 0.0, "mlp": 0.0}
    for i in range(p.num_layers):
        text_mlp = 0 if p.arch == "v2" and i == p.num_layers - 1 else txt
        flops["qkv"] += 2 * (vid + txt) * d * 3 * inner
        flops["proj_out"] += 2 * (vid + txt) * inner * d
        flops["mlp"] += 2 * (vid + text_mlp) * matrices * d * hidden
        for (t0, t1), (h0, h1), (w0, w1) in make_windows((t, h, w), p.windows[i], p.window_methods[i]):
            seq = (t1 - t0) * (h1 - h0) * (w1 - w0) + txt
            flops["attention"] += 4 * seq * seq * inner
    flops["embed"] = 2 * vid * (p.vid_in_channels * p.patch**2 + p.vid_out_channels * p.patch**2) * d + 2 * txt * p.txt_in_dim * d
    return flops


@torch.no_grad()
def random_init_(module: torch.nn.Module, seed: int) -> None:
    """Plausible random weights: matrices ~ N(0, 1/fan_in), norm/scale vectors 1, other vectors 0.

    The normal values come from one pool of RANDOM_POOL draws, laid out periodically (rotated for each
    matrix): speed does not depend on the values, and drawing the 3B's 900 million weights one by one
    took 8 s of a one-thread start-up, a cost the ranks of a parallel run cannot share.
    """
    device = next(module.parameters()).device
    pool = torch.randn(RANDOM_POOL, generator=torch.Generator(device).manual_seed(seed), device=device)
    for i, (name, param) in enumerate(module.named_parameters()):
        if param.ndim >= 2:
            values = pool.roll(i * 977) / math.sqrt(math.prod(param.shape[1:]))
            flat = param.view(-1)
            whole = flat.numel() // RANDOM_POOL * RANDOM_POOL
            flat[:whole].view(-1, RANDOM_POOL).copy_(values)
            flat[whole:].copy_(values[: flat.numel() - whole])
        elif "norm" in name or name.endswith("scale") or name.endswith("weight"):
            param.fill_(1)
        else:
            param.zero_()


def _materialize(module: torch.nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Allocate a meta-built module directly in `dtype` on `device` (one copy) and fill it."""
    module = cast_model(module, dtype).to_empty(device=device)
    random_init_(module, seed)
    for name, buf in module.named_buffers():
        if name.endswith("rope.freqs"):
            buf.copy_(model_frequencies(module.params))
    return module.eval().requires_grad_(False)


def build_models(args: argparse.Namespace) -> tuple[RestorationModels, NaDiTParams]:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.model == "tiny":
        arch, dit_cfg = "v2", json.loads((FIXTURES / "dit_v2" / "config.json").read_text())
        vae_cfg = json.loads((FIXTURES / "vae" / "config.json").read_text())
        weights = {"dit": FIXTURES / "dit_v2" / "weights.safetensors", "vae": FIXTURES / "vae" / "weights.safetensors"}
        scaling = 0.9152
    else:
        config = yaml.safe_load((REPO / f"configs_{args.model}" / "main.yaml").read_text())
        arch, dit_cfg, vae_cfg = config["dit"]["arch"], config["dit"]["model"], config["vae"]["model"]
        if args.dit_layers:
            dit_cfg = first_layers(dit_cfg, args.dit_layers)
        scaling = config["vae"]["scaling_factor"]
        weights = None
        if args.ckpt_dir:
            ckpt = Path(args.ckpt_dir)
            weights = {"dit": ckpt / config["dit"]["checkpoints"]["normal"], "vae": ckpt / config["vae"]["checkpoint"]}
    with torch.device("meta"):
        dit, vae = build_dit(arch, dit_cfg), build_vae(vae_cfg)
    if weights:
        from seedvr.checkpoints import load_weights

        load_weights(dit, weights["dit"], dtype, device)
        load_weights(vae, weights["vae"], dtype, device)
        dit, vae = dit.eval().requires_grad_(False), vae.eval().requires_grad_(False)
    else:
        dit, vae = _materialize(dit, device, dtype, 1), _materialize(vae, device, dtype, 2)
    text_path = Path(args.ckpt_dir or "") / "pos_emb.pt"
    if args.ckpt_dir and text_path.exists():
        from seedvr.checkpoints import load_text_embedding

        text = load_text_embedding(text_path, dtype, device)
    else:
        text = torch.randn(TEXT_TOKENS, dit.params.txt_in_dim, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    if args.compile:
        compile_regions(dit, vae)
    return RestorationModels(dit=dit, vae=vae, text_emb=text, scaling_factor=scaling, device=device, dtype=dtype), dit.params


def first_layers(dit_cfg: dict, layers: int) -> dict:
    """A DiT config cut to its first `layers` blocks (full width): a cheaper model of the same shape."""
    if not 1 <= layers <= dit_cfg["num_layers"]:
        raise ValueError(f"--dit-layers must be between 1 and {dit_cfg['num_layers']}, got {layers}")
    per_layer = {k: v[:layers] for k, v in dit_cfg.items() if isinstance(v, list) and len(v) == dit_cfg["num_layers"]}
    return {**dit_cfg, **per_layer, "num_layers": layers}


def pattern_frames(frames: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [frames, h, w, 3]: a moving colour pattern (structure at every scale, so codecs and VAE do real work)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((frames, h, w, 3), np.uint8)
    for i in range(frames):
        phase = i / max(frames, 1) * 2 * math.pi
        r = 127 + 120 * np.sin(xx / 9 + phase)
        g = 127 + 120 * np.sin(yy / 13 - phase)
        b = 127 + 120 * np.sin((xx + yy) / 21 + 2 * phase)
        out[i] = np.stack([r, g, b], -1).clip(0, 255)
    return out


def write_clip(path: Path, frames: int, size: tuple[int, int], fps: Fraction) -> None:
    from seedvr import media  # here: gpu_check.py imports this module on machines without PyAV

    if path.suffix == ".png":  # an image: the first frame
        media.write_image(path, pattern_frames(1, size)[0], "png")
        return
    with media.VideoWriter(path, *size, fps, fmt="mp4", crf=18) as writer:
        writer.write(pattern_frames(frames, size))


class PeakMemory:
    """Peak GPU memory of each model call (DiT forward, VAE encode, VAE decode), by wrapping the models
    the pipeline is given. On the CPU only the process's peak RSS is known (reported separately)."""

    def __init__(self, models: RestorationModels):
        self.models = models
        self.peaks: dict[str, int] = {}

    def _measured(self, stage: str, call):
        def wrapped(*args, **kwargs):
            torch.cuda.reset_peak_memory_stats(self.models.device)
            out = call(*args, **kwargs)
            peak = torch.cuda.max_memory_allocated(self.models.device)
            self.peaks[stage] = max(self.peaks.get(stage, 0), peak)
            return out

        return wrapped

    def wrap(self) -> RestorationModels:
        if self.models.device.type != "cuda":
            return self.models
        vae = self.models.vae
        proxy = type("MeasuredVAE", (), {})()
        proxy.encode = self._measured("encode", vae.encode)
        proxy.decode = self._measured("vae_decode", vae.decode)
        return replace(self.models, dit=self._measured("dit", self.models.dit), vae=proxy)


def dit_flops_total(params: NaDiTParams, plan, frames: int) -> float:
    """FLOPs of every DiT call the plan makes (one per temporal window)."""
    h, w = plan.padded_size
    total = 0.0
    for start, stop in plan_windows(max(frames, 1), plan.window, plan.overlap):
        latent_t = (padded_length(stop - start) - 1) // 4 + 1
        total += sum(dit_flops(params, (latent_t, h // 8, w // 8), TEXT_TOKENS).values())
    return total


@dataclass
class Report:
    model: str
    device: str
    gpu: str | None
    dtype: str
    attention: str
    compile: bool
    input: str
    output: str
    frames: int
    window: int
    overlap: int
    tiling: str | None
    seconds: dict[str, float]
    peak_memory_mb: dict[str, float]
    sp_size: int
    rank_peak_memory_mb: list[float]  # per rank: peak GPU memory allocated, or peak RSS on the CPU
    output_fps: float
    dit_gflop: float
    dit_tflops_per_s: float
    command: str


def rank_peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(args: argparse.Namespace, ranks: parallel.Ranks) -> Report:
    from seedvr import parallel  # here: gpu_check.py imports this module on machines without PyAV
    if args.attention != "auto":
        os.environ["SEEDVR_ATTENTION"] = args.attention
    torch.manual_seed(0)
    args.device = str(ranks.device) if ranks.group is not None else args.device
    models, params = build_models(args)
    options = RestoreOptions(
        res_h=args.res[1], res_w=args.res[0], scale=args.scale, color_fix=args.color_fix,
        batch_frames=args.batch_frames, overlap_frames=args.overlap_frames, vae_tile=args.vae_tile,
    )
    image = args.frames == 1
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / ("in.png" if image else "in.mp4")
        if ranks.is_main:
            write_clip(src, args.frames, args.in_size, Fraction(24))
        src = parallel.broadcast_object(src, ranks)  # every rank restores the main rank's clip
        dst = Path(tmp) / ("out.png" if image else "out.mp4")
        for _ in range(args.warmup):
            parallel.restore_file(src, dst, models, options, ranks)
        memory = PeakMemory(models)
        # The per-call memory wrappers stand in for the models, which a split DiT needs as they are.
        measured = memory.wrap() if ranks.group is None else models
        result = parallel.restore_file(src, dst, measured, options, ranks)
    rank_peaks = [rank_peak_mb(models.device)]
    if ranks.group is not None:
        rank_peaks = [None] * ranks.size
        torch.distributed.all_gather_object(rank_peaks, rank_peak_mb(models.device), group=ranks.group)
    plan = make_plan(args.in_size[1], args.in_size[0], args.frames, models, options)
    flops = dit_flops_total(params, plan, args.frames)
    seconds = {stage: round(result.timings.get(stage, 0.0), 4) for stage in (*STAGES, "total")}
    if models.device.type == "cuda":
        peaks = {stage: round(v / 2**20, 1) for stage, v in memory.peaks.items()}
        gpu = torch.cuda.get_device_name(models.device)
    else:
        peaks = {"process_rss": rank_peaks[0]}
        gpu = None
    return Report(
        model=args.model, device=str(models.device), gpu=gpu, dtype=args.dtype, attention=args.attention,
        compile=args.compile, input=f"{args.in_size[0]}x{args.in_size[1]}",
        output=f"{result.output_size[0]}x{result.output_size[1]}", frames=result.frames,
        window=plan.window, overlap=plan.overlap, tiling=None if plan.tiling is None else str(plan.tiling.tile),
        seconds=seconds, peak_memory_mb=peaks, sp_size=ranks.size, rank_peak_memory_mb=rank_peaks,
        output_fps=round(result.frames / result.timings["total"], 3),
        dit_gflop=float(f"{flops / 1e9:.5g}"),
        dit_tflops_per_s=float(f"{flops / 1e12 / max(result.timings.get('dit', 0.0), 1e-9):.4g}"),
        command=" ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
    )


def markdown(report: Report) -> str:
    head = (
        f"**{report.model}** {report.dtype} on {report.gpu or report.device}, attention {report.attention}, "
        f"compile {'on' if report.compile else 'off'}: {report.frames} frames {report.input} -> {report.output}, "
        f"window {report.window} (overlap {report.overlap}), VAE tiles {report.tiling or 'off'}\n\n"
    )
    rows = ["| stage | seconds | peak memory (MB) |", "| --- | --- | --- |"]
    for stage, seconds in report.seconds.items():
        peak = report.peak_memory_mb.get(stage, "")
        rows.append(f"| {stage} | {seconds:.3f} | {peak} |")
    tail = (
        f"\noutput fps {report.output_fps}; DiT {report.dit_gflop} GFLOP at {report.dit_tflops_per_s} TFLOP/s; "
        f"peak memory {report.peak_memory_mb}; {report.sp_size} rank(s), peak MB per rank {report.rank_peak_memory_mb}"
        f"\n\n`{report.command}`\n"
    )
    return head + "\n".join(rows) + "\n" + tail


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "3b", "7b"), default="tiny",
                   help="tiny = the fixture models (CPU smoke run); 3b/7b = real configs (default: tiny)")
    p.add_argument("--ckpt-dir", help="load real weights from this flat checkpoint folder instead of random ones")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--attention", choices=("auto", "sdpa", "flash"), default="auto", help="attention kernel (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT and VAE blocks, as the worker's SEEDVR_COMPILE=1 does (add --warmup 1)")
    p.add_argument("--dit-layers", type=int, help="cut the 3b/7b DiT to its first N blocks (full width)")
    p.add_argument("--sp-size", type=int, default=1,
                   help="ranks restoring the job together; > 1 runs under torchrun --nproc-per-node SP_SIZE")
    p.add_argument("--frames", type=int, default=21, help="frames of the synthetic clip; 1 = an image (default: 21)")
    p.add_argument("--in-size", type=parse_size, default=(640, 360), help="input WxH (default: 640x360)")
    p.add_argument("--res", type=parse_size, default=(1280, 720),
                   help="output area as WxH; the aspect ratio follows the input (default: 1280x720)")
    p.add_argument("--scale", type=float, help="upscale factor instead of --res")
    p.add_argument("--batch-frames", type=int, help="temporal window (4n+1); default: chosen from memory")
    p.add_argument("--overlap-frames", type=int, help="frames shared by neighbouring windows")
    p.add_argument("--vae-tile", type=int, help="VAE tile size in pixels; 0 = never tile; default: automatic")
    p.add_argument("--color-fix", choices=("wavelet", "adain", "none"), default="wavelet")
    p.add_argument("--warmup", type=int, default=0, help="untimed runs first (compilation, kernel autotuning)")
    p.add_argument("--json", type=Path, help="also write the report as JSON to this file ('-': JSON alone on stdout)")
    p.add_argument("--save-weights", type=Path, metavar="DIR",
                   help="only write the random weights to DIR as a checkpoint folder, for later runs' --ckpt-dir")
    return p


def save_weights(args: argparse.Namespace, folder: Path) -> None:
    """Write the models' random weights as a checkpoint folder (the file names of the model's config) that
    `--ckpt-dir` loads: runs then start as with real checkpoints (memory-mapped: on a CPU the ranks of a
    parallel run share one copy in the page cache)."""
    if args.model == "tiny" or args.ckpt_dir:
        raise SystemExit("--save-weights needs --model 3b or 7b and random weights (no --ckpt-dir)")
    config = yaml.safe_load((REPO / f"configs_{args.model}" / "main.yaml").read_text())
    models, _ = build_models(args)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(models.dit.state_dict(), folder / config["dit"]["checkpoints"]["normal"])
    torch.save(models.vae.state_dict(), folder / config["vae"]["checkpoint"])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.save_weights:
        save_weights(args, args.save_weights)
        return 0
    from seedvr import parallel

    ranks = parallel.init_from_env("cuda" if args.device.startswith("cuda") else "cpu")
    if ranks.size != args.sp_size:
        raise SystemExit(f"--sp-size {args.sp_size} must equal the number of torchrun processes ({ranks.size})")
    try:
        report = run(args, ranks)
    finally:
        if ranks.group is not None:
            torch.distributed.destroy_process_group()
    if not ranks.is_main:
        return 0
    text = json.dumps(asdict(report), indent=2)
    if str(args.json) == "-":
        print(text)
        return 0
    print(markdown(report))
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
