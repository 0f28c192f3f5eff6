#!/usr/bin/env python3
"""Time one restoration on N sequence-parallel ranks against one process, at the same threads per rank.

Runs `scripts/bench.py BENCH_ARGS` as one process and as `torchrun --nproc-per-node N scripts/bench.py
BENCH_ARGS --sp-size N`, alternately, `--repeat` times, every process with OMP_NUM_THREADS=--threads
(on a CPU machine, N ranks x T threads should not exceed its cores). The time is the wall time of the
whole command: start-up, loading the models, writing and decoding the clip, restoring, writing the
output; so the speed-up is what a user of the command sees. Prints a markdown table (medians, speed-up,
every rank's peak memory, the stage times of rank 0) and writes it as JSON with --json.

Random weights are written once, untimed, as a checkpoint folder (`bench.py --save-weights`), and every
run loads them with `--ckpt-dir` through the real checkpoint loader, as a user's runs load the released
files: memory-mapped, so the ranks of a CPU run share one copy (peak RSS counts the shared pages in
every rank). Pass your own `--ckpt-dir` among the bench arguments to time real weights instead.

Example (docs/parallel.md has the measured table):
  python scripts/bench_parallel.py --ranks 2 --threads 1 -- --model 3b --dit-layers 4 --device cpu \\
      --frames 17 --in-size 80x48 --res 160x96 --batch-frames 9 --vae-tile 0
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench.py"


def option(args: list[str], name: str, default: str) -> str:
    """The value of `name` among command-line arguments (`--name value` or `--name=value`)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(ranks: int, bench_args: list[str], report: Path) -> list[str]:
    bench = [str(BENCH), *bench_args, "--json", str(report)]
    if ranks == 1:
        return [sys.executable, *bench]
    launch = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
              "--master-port", str(free_port())]
    return [sys.executable, *launch, *bench, "--sp-size", str(ranks)]


def timed_run(ranks: int, threads: int, bench_args: list[str], report: Path) -> tuple[float, dict]:
    """Wall seconds of the whole command and rank 0's report."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command(ranks, bench_args, report), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return seconds, json.loads(report.read_text())


def measure(ranks: int, threads: int, repeat: int, bench_args: list[str]) -> dict:
    """One process and `ranks` ranks, alternately (so a change of machine load hits both)."""
    runs: dict[int, list[tuple[float, dict]]] = {1: [], ranks: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            for n in (1, ranks):
                runs[n].append(timed_run(n, threads, bench_args, Path(tmp) / f"report_{n}_{i}.json"))
    result = {"ranks": ranks, "threads_per_rank": threads, "repeat": repeat, "bench_args": bench_args}
    for n, label in ((1, "one"), (ranks, "split")):
        result[label] = {
            "wall_seconds": [round(s, 2) for s, _ in runs[n]],
            "median_seconds": round(statistics.median(s for s, _ in runs[n]), 2),
            "peak_memory_mb_per_rank": runs[n][-1][1]["rank_peak_memory_mb"],
            "stage_seconds_rank0": runs[n][-1][1]["seconds"],
            "output": runs[n][-1][1]["output"],
            "frames": runs[n][-1][1]["frames"],
        }
    result["speedup"] = round(result["one"]["median_seconds"] / result["split"]["median_seconds"], 3)
    return result


def markdown(result: dict) -> str:
    one, split, n = result["one"], result["split"], result["ranks"]
    rows = [
        f"| job | 1 rank x {result['threads_per_rank']} thread(s) | {n} ranks x {result['threads_per_rank']} | "
        "speed-up | peak MB per rank (1) | peak MB per rank (N) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {one['frames']} frame(s) -> {one['output']} | {one['median_seconds']} s | {split['median_seconds']} s | "
        f"{result['speedup']}x | {one['peak_memory_mb_per_rank']} | {split['peak_memory_mb_per_rank']} |",
    ]
    stages = ", ".join(f"{k} {one['stage_seconds_rank0'][k]} / {v}" for k, v in split["stage_seconds_rank0"].items())
    args = " ".join(result["bench_args"])
    return "\n".join(rows) + f"\n\nrank 0 stage seconds (1 rank / {n} ranks): {stages}\n\nbench.py {args}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2, help="ranks of the parallel run (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default: 1)")
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs; the medians are reported (default: 1)")
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the arguments of scripts/bench.py")
    args = p.parse_args(argv)
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if args.ranks < 2:
        p.error("--ranks must be at least 2")
    with tempfile.TemporaryDirectory() as weights:
        run_args = bench_args
        if "--ckpt-dir" not in bench_args and option(bench_args, "--model", "tiny") != "tiny":
            subprocess.run([sys.executable, str(BENCH), *bench_args, "--save-weights", weights], check=True)
            run_args = [*bench_args, "--ckpt-dir", weights]
        result = measure(args.ranks, args.threads, args.repeat, run_args)
    result["bench_args"] = bench_args
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
