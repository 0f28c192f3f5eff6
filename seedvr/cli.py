"""`python -m seedvr restore INPUT OUTPUT ...`: restore one file from the command line.

Loads the model through the same manager the worker uses (configs_<model>/main.yaml + the flat
checkpoint folder), restores with a progress bar and prints a short summary.
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from seedvr.manager import PROJECT_ROOT, ManagerConfig, ModelManager, ModelSpec
from seedvr.media import MediaError
from seedvr.pipeline import COLOR_FIXES, Progress, RestoreOptions, restore_file

MODELS = {"3b": "seedvr2_3b", "7b": "seedvr2_7b"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seedvr", description="SeedVR2 video and image restoration")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("restore", help="restore a video or an image file")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--model", choices=sorted(MODELS), default="3b")
    p.add_argument("--variant", choices=("normal", "sharp"), default="normal", help="sharp exists for 7b only")
    p.add_argument("--res-h", type=int, default=1280, help="with --res-w: output area res_h*res_w, aspect kept")
    p.add_argument("--res-w", type=int, default=720)
    p.add_argument("--scale", type=float, help="instead of --res-h/--res-w: factor over the input size")
    p.add_argument("--seed", type=int, default=666)
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet")
    p.add_argument("--batch-frames", type=int, help="frames per temporal window, 4n+1 (default: from memory)")
    p.add_argument("--overlap-frames", type=int, help="frames shared and crossfaded by neighbouring windows")
    p.add_argument("--vae-tile", type=int, help="VAE tile size in pixels (0: never tile; default: from memory)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--ckpt-dir", type=Path, default=Path("ckpts"))
    p.add_argument("--config-dir", type=Path, default=PROJECT_ROOT, help="folder holding configs_3b/, configs_7b/")
    p.add_argument("--format", dest="output_format", help="output format (default: from OUTPUT's suffix)")
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--no-audio", action="store_true", help="do not copy the input's audio")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


class ProgressBar:
    """tqdm over frames written, its description showing the stage and window."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: Progress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=event.frames_total, unit="frame", file=sys.stderr)
        self.bar.total = max(self.bar.total or 0, event.frames_total)
        self.bar.set_description(f"{event.stage} {event.window}/{event.windows}")
        self.bar.update(event.frames_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _output_format(path: Path, explicit: str | None) -> str | None:
    if explicit:
        return explicit
    suffix = path.suffix.lower().lstrip(".")
    return {"jpeg": "jpg"}.get(suffix, suffix) or None


def restore(args: argparse.Namespace) -> int:
    options = RestoreOptions(
        res_h=args.res_h, res_w=args.res_w, scale=args.scale, seed=args.seed, color_fix=args.color_fix,
        batch_frames=args.batch_frames, overlap_frames=args.overlap_frames, vae_tile=args.vae_tile,
    )
    device = torch.device(args.device) if args.device else None
    manager = ModelManager(
        ManagerConfig(ckpt_dir=args.ckpt_dir, config_dir=args.config_dir),
        device=device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
    )
    spec = ModelSpec(model_type=MODELS[args.model], variant=args.variant)
    if args.variant not in manager.variants(spec.model_type):
        raise ValueError(f"--variant {args.variant} does not exist for --model {args.model}")
    load_seconds = manager.ensure(spec)
    bar = ProgressBar()
    try:
        result = restore_file(
            args.input, args.output, manager.models, options,
            keep_audio=not args.no_audio, output_format=_output_format(args.output, args.output_format),
            crf=args.crf, progress=bar,
        )
    finally:
        bar.close()
    (in_w, in_h), (out_w, out_h) = result.input_size, result.output_size
    fps = f" at {result.fps:.3f} fps" if result.fps else ""
    print(f"{result.media_type}: {in_w}x{in_h} -> {out_w}x{out_h}, {result.frames} frame(s){fps} -> {result.path}")
    stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    print(f"model {spec.model_type} ({spec.variant}) on {manager.device} {manager.dtype}, load {load_seconds:.1f}s")
    print(f"timings: {stages}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return restore(args)
    except (ValueError, OSError, RuntimeError, MediaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
