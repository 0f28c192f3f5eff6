#!/usr/bin/env python3
"""Wall time of the client's fan-out against one job on the same endpoint or server, interleaved.

    python scripts/bench_fanout.py clip.mp4 --url http://127.0.0.1:8000 --workers 3 --repeats 4 -- --scale 1
    python scripts/bench_fanout.py clip.mp4 --endpoint abc123xyz --workers 8 -- --res-h 1280 --res-w 720

Arguments after `--` go to scripts/client.py for both runs. A warm-up job loads the model first; then
single job and fan-out alternate `--repeats` times, so that a change in the machine's load hits both
alike, and the report gives each pair's ratio and their median. The frames of both outputs are compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedvr import media  # noqa: E402


def load_client():
    spec = importlib.util.spec_from_file_location("seedvr_client", ROOT / "scripts" / "client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    return client


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url")
    where.add_argument("--endpoint")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    client = load_client()
    target = ["--url", args.url] if args.url else ["--endpoint", args.endpoint]
    common = [args.source, *target, "--poll", "0.1", *extra]
    folder = Path(tempfile.mkdtemp(prefix="bench-fanout-"))

    def timed(name: str, *more: str) -> float:
        start = time.perf_counter()
        if client.main([*common, "-o", str(folder / f"{name}.mp4"), *more]) != 0:
            raise SystemExit(f"the {name} run failed")
        return time.perf_counter() - start

    timed("warm-up")
    single, fanned = [], []
    for i in range(args.repeats):
        single.append(timed(f"single{i}"))
        fanned.append(timed(f"fanout{i}", "--workers", str(args.workers)))
    same = all(
        (media.probe(folder / f"single{i}.mp4").frames == media.probe(folder / f"fanout{i}.mp4").frames)
        for i in range(args.repeats)
    )
    ratios = [f / s for f, s in zip(fanned, single)]
    print(f"single job: {', '.join(f'{t:.2f}' for t in single)} s")
    print(f"fan-out over {args.workers}: {', '.join(f'{t:.2f}' for t in fanned)} s")
    print(f"fan-out / single per pair: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    print(f"frame counts equal: {same}; outputs in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
