#!/usr/bin/env python3
"""Measure the models on one GPU: per-stage time and peak memory, eager against compiled, SDPA against
flash-attn, and output fps against our goals and the physical limit. Writes one JSON and one markdown table.

Model level only: each case restores one window of synthetic frames with `restore_window` (preprocess,
VAE encode, DiT, VAE decode, colour fix), the pipeline's own per-window work, so that it runs where only
torch, numpy, safetensors, pyyaml and einops are installed (no PyAV, runpod or pydantic: decoding and
encoding are not measured, and the report says so). Weights are random (speed does not depend on them).

Cases run in order (3B first, then 7B; compiled cases last, since compilation changes the model in place)
and each is skipped, with the reason in the report, once the time budget is spent.

  python scripts/gpu_check.py --out results/          # on the GPU (scripts/gpu_check.sh wraps it)
  python scripts/gpu_check.py --smoke --out /tmp/gc   # the same code path on the CPU, tiny models
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import bench  # noqa: E402
from seedvr.models.compiled import compile_regions  # noqa: E402
from seedvr.pipeline import RestorationModels, RestoreOptions, make_plan  # noqa: E402
from seedvr.pipeline.restore import Stages, restore_window  # noqa: E402

STAGES = ("preprocess", "encode", "dit", "vae_decode", "postprocess")
SIZES = {  # name: (input WxH, output area WxH)
    "720p": ((640, 360), (1280, 720)),
    "1080p": ((960, 540), (1920, 1080)),
    "tiny": ((64, 48), (128, 96)),
}
GOALS_FPS = {("3b", "720p"): 11.0, ("7b", "1080p"): 4.5}
PEAK_TFLOPS = 790.0  # dense bf16 of an H100/H200 (docs/benchmarks.md)
# VAE work per output pixel-frame, from spec §9: 720p, 21 frames: encode 178 + decode 463 TFLOP.
VAE_FLOP_PER_PIXEL_FRAME = (178 + 463) * 1e12 / (1280 * 720 * 21)
OPTIONAL = ("av", "runpod", "pydantic", "flash_attn")


@dataclass
class Case:
    model: str
    size: str
    frames: int
    attention: str = "sdpa"
    compile: bool = False


@dataclass
class Result:
    case: Case
    output: str = ""
    window: int = 0
    tiling: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_gb: dict[str, float] = field(default_factory=dict)
    warmup_seconds: float = 0.0
    fps: float = 0.0
    goal_fps: float | None = None
    dit_tflops_per_s: float = 0.0
    limit_fps_dit: float = 0.0
    limit_fps_dit_vae: float = 0.0
    skipped: str | None = None


def plan_cases(smoke: bool, flash: bool) -> list[Case]:
    if smoke:
        return [Case("tiny", "tiny", 5), Case("tiny", "tiny", 9), Case("tiny", "tiny", 5, "sdpa", True)]
    attentions = ["sdpa", "flash"] if flash else ["sdpa"]
    cases = []
    for model, goal_size, other_size in (("3b", "720p", "1080p"), ("7b", "1080p", "720p")):
        cases += [Case(model, goal_size, 21, a) for a in attentions]
        cases += [Case(model, other_size, 21, a) for a in attentions]
        cases.append(Case(model, "720p", 61, attentions[-1]))  # one longer window
        cases.append(Case(model, goal_size, 21, attentions[-1], compile=True))
    return cases


def build(model: str, device: str, dtype: str) -> tuple[RestorationModels, object]:
    args = argparse.Namespace(model=model, device=device, dtype=dtype, ckpt_dir=None, compile=False)
    return bench.build_models(args)


def run_case(case: Case, models: RestorationModels, params: object, compile_backend: str) -> Result:
    os.environ["SEEDVR_ATTENTION"] = case.attention
    in_size, area = SIZES[case.size]
    options = RestoreOptions(res_h=area[1], res_w=area[0], batch_frames=case.frames)
    plan = make_plan(in_size[1], in_size[0], case.frames, models, options)
    frames = bench.pattern_frames(case.frames, in_size)
    memory = bench.PeakMemory(models)
    measured = memory.wrap()
    start = time.perf_counter()
    restore_window(frames, models, options, plan, 0, Stages(models.device, 1, case.frames))  # warm-up
    warmup = time.perf_counter() - start
    stages = Stages(models.device, 1, case.frames)
    restore_window(frames, measured, options, plan, 0, stages)
    total = sum(stages.timings[s] for s in STAGES)
    dit_flop = bench.dit_flops_total(params, plan, case.frames)
    h, w = plan.size
    vae_flop = VAE_FLOP_PER_PIXEL_FRAME * h * w * case.frames
    if models.device.type == "cuda":
        peaks = {stage: round(v / 2**30, 2) for stage, v in memory.peaks.items()}
    else:
        peaks = {"process_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    return Result(
        case=case, output=f"{w}x{h}", window=plan.window, tiling=None if plan.tiling is None else str(plan.tiling.tile),
        seconds={s: round(stages.timings[s], 4) for s in STAGES} | {"total": round(total, 4)},
        peak_memory_gb=peaks, warmup_seconds=round(warmup, 2), fps=round(case.frames / total, 3),
        goal_fps=GOALS_FPS.get((case.model, case.size)),
        dit_tflops_per_s=float(f"{dit_flop / 1e12 / max(stages.timings['dit'], 1e-9):.4g}"),
        limit_fps_dit=round(case.frames / (dit_flop / (PEAK_TFLOPS * 1e12)), 2),
        limit_fps_dit_vae=round(case.frames / ((dit_flop + vae_flop) / (PEAK_TFLOPS * 1e12)), 2),
    )


def run_all(cases: list[Case], device: str, dtype: str, budget: float, compile_backend: str) -> list[Result]:
    started, results = time.perf_counter(), []
    loaded: tuple[str, RestorationModels, object] | None = None
    for case in cases:
        if time.perf_counter() - started > budget:
            results.append(Result(case=case, skipped=f"time budget of {budget:.0f} s spent"))
            continue
        if loaded is None or loaded[0] != case.model:
            loaded = None
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            loaded = (case.model, *build(case.model, device, dtype))
        _, models, params = loaded
        if case.compile and not getattr(models.dit, "seedvr_compiled", False):
            compile_regions(models.dit, models.vae, backend=compile_backend)
            models.dit.seedvr_compiled = True
        try:
            results.append(run_case(case, models, params, compile_backend))
        except torch.OutOfMemoryError as exc:
            results.append(Result(case=case, skipped=f"out of memory: {str(exc).splitlines()[0]}"))
        print(json.dumps(asdict(results[-1])), flush=True)
    return results


def environment(device: str) -> dict:
    cuda = device.startswith("cuda")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "installed": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL},
    }


def markdown(env: dict, results: list[Result], skipped: list[str]) -> str:
    lines = [
        f"**{env['device']}**, torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, {env['date']}",
        "",
        "| model | output | frames | attention | compile | preprocess | encode | dit | vae_decode | colour fix "
        "| total s | fps | goal | limit fps (DiT / DiT+VAE) | DiT TFLOP/s | peak GB (encode / dit / decode) |",
        "| --- " * 16 + "|",
    ]
    for r in results:
        c = r.case
        head = f"| {c.model} | {r.output or c.size} | {c.frames} | {c.attention} | {'yes' if c.compile else 'no'} "
        if r.skipped:
            lines.append(head + f"| skipped: {r.skipped} " + "| " * 10 + "|")
            continue
        s, p = r.seconds, r.peak_memory_gb
        goal = "" if r.goal_fps is None else f"{r.goal_fps} ({'met' if r.fps >= r.goal_fps else 'missed'})"
        peaks = " / ".join(str(p.get(k, "")) for k in ("encode", "dit", "vae_decode")) if "dit" in p else str(p)
        lines.append(
            head + "".join(f"| {s[k]:.3f} " for k in (*STAGES, "total"))
            + f"| {r.fps} | {goal} | {r.limit_fps_dit} / {r.limit_fps_dit_vae} | {r.dit_tflops_per_s} | {peaks} |"
        )
    lines += ["", "Skipped:", *(f"- {line}" for line in skipped)] if skipped else []
    return "\n".join(lines) + "\n"


def skipped_notes(env: dict, smoke: bool) -> list[str]:
    notes = ["input decoding and output encoding (PyAV): model-level timings only"]
    if not env["installed"]["flash_attn"]:
        notes.append("flash-attn is not installed: SDPA only")
    missing = [name for name in ("av", "runpod", "pydantic") if not env["installed"][name]]
    if missing:
        notes.append(f"not installed here, and not needed: {', '.join(missing)}")
    if smoke:
        notes.append("--smoke: tiny fixture models on the CPU; compiled with the aot_eager backend (no codegen)")
    return notes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="folder for gpu_check.json and .md")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script end to end")
    p.add_argument("--budget", type=float, default=400.0, help="seconds after which remaining cases are skipped")
    p.add_argument("--device", default="cuda", help="default cuda (cpu with --smoke)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = "cpu" if args.smoke else args.device
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke for the CPU check", file=sys.stderr)
        return 2
    env = environment(device)
    cases = plan_cases(args.smoke, env["installed"]["flash_attn"] and not args.smoke)
    dtype = "fp32" if args.smoke else "bf16"
    results = run_all(cases, device, dtype, args.budget, "aot_eager" if args.smoke else "inductor")
    skipped = skipped_notes(env, args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": env, "skipped": skipped, "results": [asdict(r) for r in results]}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(env, results, skipped)
    (args.out / "gpu_check.md").write_text(table)
    print(table)
    return 0 if all(r.skipped is None for r in results) or not args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
