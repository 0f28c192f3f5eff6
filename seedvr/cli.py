"""`python -m seedvr restore INPUT OUTPUT ...`: restore one file from the command line.

Loads the model through the same manager the worker uses (configs_<model>/main.yaml + the flat
checkpoint folder), restores with a progress bar and prints a short summary. Under
`torchrun --nproc-per-node N -m seedvr restore ... --sp-size N` every rank loads the model on its own
GPU and runs the same restoration with the DiT split over the ranks (docs/parallel.md); rank 0
shows the progress, writes OUTPUT and prints the summary.
"""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from seedvr import parallel
from seedvr.checkpoints import default_ckpt_dir
from seedvr.manager import PROJECT_ROOT, ManagerConfig, ModelManager, ModelSpec, default_device
from seedvr.media import MediaError
from seedvr.pipeline import COLOR_FIXES, Progress, RestoreOptions

MODELS = {"3b": "seedvr2_3b", "7b": "seedvr2_7b"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Append the default where there is one; options decided at run time say so in their own help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m seedvr", description="SeedVR2 video and image restoration")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "restore",
        help="restore a video or an image file",
        description="Restore one video or image file. The output keeps the input's aspect ratio: --res-h x "
        "--res-w is an area (1280x720 means about 921,600 pixels, landscape or portrait alike), not a frame size.",
        formatter_class=_HelpWithDefaults,
    )
    p.add_argument("input", type=Path, help="video or image file (the kind is read from its bytes)")
    p.add_argument("output", type=Path, help="where to write the result; its suffix picks the format")
    p.add_argument("--model", choices=sorted(MODELS), default="3b", help="SeedVR2 model size")
    p.add_argument("--variant", choices=("normal", "sharp"), default="normal", help="sharp exists for 7b only")
    p.add_argument(
        "--res-h", type=int, default=1280, help="with --res-w: output area res_h*res_w pixels, aspect kept"
    )
    p.add_argument("--res-w", type=int, default=720, help="see --res-h: the area, not the output width")
    p.add_argument("--scale", type=float, help="instead of --res-h/--res-w: factor over the input size (default: unused)")
    p.add_argument("--seed", type=int, default=666, help="same input, seed and settings give the same output")
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="wavelet", help="keep the input's colours")
    p.add_argument(
        "--batch-frames", type=int, help="frames per temporal window, 4n+1 (default: the largest that fits memory)"
    )
    p.add_argument(
        "--overlap-frames",
        type=int,
        help="frames shared and crossfaded by neighbouring windows (default: 5, or 1 for 5-frame windows; "
        "without --batch-frames at most 4)",
    )
    p.add_argument("--vae-tile", type=int, help="VAE tile size in pixels (0: never tile; default: from memory)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument(
        "--sp-size", type=int, default=1,
        help="sequence-parallel ranks, one GPU each; > 1 runs under torchrun --nproc-per-node SP_SIZE",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument(
        "--ckpt-dir", type=Path, default=default_ckpt_dir(), help="flat checkpoint folder ($SEEDVR_CKPT_DIR, else ckpts)"
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=Path(os.environ.get("SEEDVR_CONFIG_DIR") or PROJECT_ROOT),
        help="folder holding configs_3b/, configs_7b/ ($SEEDVR_CONFIG_DIR, else the project)",
    )
    p.add_argument(
        "--format", dest="output_format", help="mp4, webm, mov (video); png, jpg, webp (image) (default: OUTPUT's suffix)"
    )
    p.add_argument("--crf", type=int, default=18, help="video quality, 0 (lossless) to 51 (worst), x264's scale")
    p.add_argument("--no-audio", action="store_true", help="do not copy the input's audio")
    p.add_argument("-v", "--verbose", action="store_true", help="log the plan, the backends and each stage")
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


def join_ranks(sp_size: int, device: str | None) -> parallel.Ranks:
    """The sequence-parallel group this process belongs to, checked against how it was started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if sp_size < 1:
        raise ValueError(f"--sp-size must be >= 1, got {sp_size}")
    if sp_size != world:
        started = f"torchrun started {world} processes" if "WORLD_SIZE" in os.environ else "not started by torchrun"
        raise ValueError(
            f"--sp-size {sp_size} must equal the number of torchrun processes ({started}): "
            f"run torchrun --nproc-per-node {sp_size} -m seedvr restore ... --sp-size {sp_size}"
        )
    if sp_size == 1:
        return parallel.Ranks(group=None, rank=0, size=1, device=torch.device(device) if device else default_device())
    if device is not None and device not in ("cuda", "cpu"):
        raise ValueError(f"--device {device}: with --sp-size > 1 rank r uses cuda:r; give --device cuda or cpu")
    return parallel.init_from_env(device)


def restore(args: argparse.Namespace, ranks: parallel.Ranks) -> int:
    options = RestoreOptions(
        res_h=args.res_h, res_w=args.res_w, scale=args.scale, seed=args.seed, color_fix=args.color_fix,
        batch_frames=args.batch_frames, overlap_frames=args.overlap_frames, vae_tile=args.vae_tile,
    )
    manager = ModelManager(
        ManagerConfig(ckpt_dir=args.ckpt_dir, config_dir=args.config_dir),
        device=ranks.device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
    )
    spec = ModelSpec(model_type=MODELS[args.model], variant=args.variant, sp_size=ranks.size)
    if args.variant not in manager.variants(spec.model_type):
        raise ValueError(f"--variant {args.variant} does not exist for --model {args.model}")
    load_seconds = manager.ensure(spec)
    bar = ProgressBar() if ranks.is_main else None
    try:
        result = parallel.restore_file(
            args.input, args.output, manager.models, options, ranks,
            keep_audio=not args.no_audio, output_format=_output_format(args.output, args.output_format),
            crf=args.crf, progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    if not ranks.is_main:
        return 0
    (in_w, in_h), (out_w, out_h) = result.input_size, result.output_size
    fps = f" at {result.fps:.3f} fps" if result.fps else ""
    print(f"{result.media_type}: {in_w}x{in_h} -> {out_w}x{out_h}, {result.frames} frame(s){fps} -> {result.path}")
    stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    ranks_text = f", {ranks.size} sequence-parallel ranks" if ranks.size > 1 else ""
    print(f"model {spec.model_type} ({spec.variant}) on {manager.device} {manager.dtype}{ranks_text}, "
          f"load {load_seconds:.1f}s")
    print(f"timings: {stages}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    level = logging.INFO if args.verbose and main_rank else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        ranks = join_ranks(args.sp_size, args.device)
        try:
            return restore(args, ranks)
        finally:
            if ranks.group is not None:
                dist.destroy_process_group()
    except (ValueError, OSError, RuntimeError, MediaError) as exc:
        where = f"rank {os.environ['RANK']}: " if args.sp_size > 1 and "RANK" in os.environ else ""
        print(f"error: {where}{exc}", file=sys.stderr)
        return 1
