#!/usr/bin/env python3
"""The pipelined restore against the one-thread restore, with a deliberately slow decoder and encoder.

Decoding and encoding are slowed by sleeping per frame (as a large input or a slow x264 preset would
be), so that each stage takes a known share of the time. Runs alternate between pipelined and one
thread (`seedvr.pipeline.restore.PIPELINED`) in one process, and the script prints each run's wall
time, the sum of its stage times, and the ratio of the medians. Pipelined, the wall time approaches the
slowest stage; in one thread it is the sum of the stages.

Example (the tiny fixture models on the CPU):
  python scripts/bench_pipeline.py --frames 13 --decode-delay 0.3 --encode-delay 0.8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import bench

from seedvr import media
from seedvr.pipeline import RestoreOptions, restore


def slow_media(decode_delay: float, encode_delay: float) -> None:
    """Sleep `decode_delay` per decoded frame and `encode_delay` per encoded frame."""
    iter_video, write = media.iter_video, media.VideoWriter.write

    def slow_iter_video(path, chunk):
        for frames in iter_video(path, chunk):
            time.sleep(decode_delay * len(frames))
            yield frames

    def slow_write(writer, frames):
        time.sleep(encode_delay * len(frames))
        write(writer, frames)

    media.iter_video, media.VideoWriter.write = slow_iter_video, slow_write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=13, help="frames of the 64x48 synthetic clip (default: 13)")
    p.add_argument("--batch-frames", type=int, default=5, help="temporal window (default: 5)")
    p.add_argument("--decode-delay", type=float, default=0.3, help="seconds of sleep per decoded frame")
    p.add_argument("--encode-delay", type=float, default=0.8, help="seconds of sleep per encoded frame")
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode, alternating (default: 3)")
    args = p.parse_args(argv)
    models, _ = bench.build_models(bench.parser().parse_args(["--model", "tiny", "--device", "cpu", "--dtype", "fp32"]))
    options = RestoreOptions(scale=1.0, batch_frames=args.batch_frames, overlap_frames=1)
    walls: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.mp4"
        bench.write_clip(src, args.frames, (64, 48), Fraction(24))
        slow_media(args.decode_delay, args.encode_delay)
        for run in range(2 * args.repeats):
            restore.PIPELINED = pipelined = run % 2 == 1
            start = time.perf_counter()
            result = restore.restore_file(src, Path(tmp) / "out.mp4", models, options, keep_audio=False)
            walls[pipelined].append(time.perf_counter() - start)
            stages = {k: round(v, 2) for k, v in result.timings.items() if k != "total"}
            total = sum(stages.values())
            print(f"{'pipelined ' if pipelined else 'one thread'}  wall {walls[pipelined][-1]:.2f} s  "
                  f"sum of stages {total:.2f} s  wall/sum {walls[pipelined][-1] / total:.2f}  {stages}", flush=True)
    serial, pipelined = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"median wall: one thread {serial:.2f} s, pipelined {pipelined:.2f} s, ratio {pipelined / serial:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
