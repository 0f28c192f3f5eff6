"""Cold start of the worker process, measured: process start to the first health answer, and to the first
restore done, with the weights (tiny fixture models) in three places: fetched from a fake hub at start, in a
fake RunPod model cache, already in SEEDVR_CKPT_DIR. The scenarios run interleaved, `--runs` times each.

    python tests/coldstart.py --runs 3        # prints a markdown table (medians, min-max)

The process is `python handler.py --rp_serve_api` (RunPod's local server): the production start path
(settings, prepare(), then the SDK) with an HTTP front that can be polled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from fakehub import FakeHub  # noqa: E402
from mediagen import make_image  # noqa: E402
from tiny import write_fake_cache, write_tiny_setup  # noqa: E402
from worker_helpers import WorkerServer, b64  # noqa: E402

from seedvr.checkpoints import CHECKPOINT_FILES, REPO_3B  # noqa: E402

FILES_3B = [CHECKPOINT_FILES[n] for n in ("seedvr2_3b", "vae", "pos_emb", "neg_emb")]


def measure(env: dict[str, str], image: Path, log: Path) -> tuple[float, float, str]:
    """Seconds from process start to the first health answer and to the first restore done; the weights state
    the first health answer reported."""
    start = time.perf_counter()
    server = WorkerServer(env, log)
    try:
        while True:
            try:
                health = server.runsync({"action": "health"}, timeout=60)["output"]
                break
            except (urllib.error.URLError, ConnectionError):
                if server.process.poll() is not None:
                    raise RuntimeError(server.log_tail()) from None
                time.sleep(0.05)
        first_health = time.perf_counter() - start
        answer = server.runsync({"image": b64(image), "res_h": 64, "res_w": 96}, timeout=600)
        assert answer.get("output", {}).get("success"), answer
        return first_health, time.perf_counter() - start, health["weights"]["state"]
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario (default 3)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seedvr-coldstart-"))
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    image = make_image(root / "still.png", width=64, height=48)
    cache = root / "hub-cache"
    write_fake_cache(cache, ckpt_dir, REPO_3B, FILES_3B)
    base = {"SEEDVR_CONFIG_DIR": str(config_dir), "SEEDVR_MODEL_CACHE": str(root / "no-cache")}
    results: dict[str, list[tuple[float, float, str]]] = {"hub": [], "cache": [], "present": []}
    with FakeHub({REPO_3B: {name: (ckpt_dir / name).read_bytes() for name in FILES_3B}}) as hub:
        for run in range(args.runs):
            for scenario in results:
                empty = root / f"ckpts-{scenario}-{run}"
                env = {
                    "hub": {"SEEDVR_CKPT_DIR": str(empty), "SEEDVR_DOWNLOAD_MODELS": "3b", "HF_ENDPOINT": hub.endpoint,
                            "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost"},
                    "cache": {"SEEDVR_CKPT_DIR": str(empty), "SEEDVR_MODEL_CACHE": str(cache)},
                    "present": {"SEEDVR_CKPT_DIR": str(ckpt_dir)},
                }[scenario]
                results[scenario].append(measure({**base, **env}, image, root / f"{scenario}-{run}.log"))
    print("| weights | runs | start → first health answer | start → first restore done | weights at first health |")
    print("| --- | --- | --- | --- | --- |")
    for scenario, runs in results.items():
        health, restore = ([r[i] for r in runs] for i in (0, 1))
        states = ", ".join(sorted({r[2] for r in runs}))
        print(
            f"| {scenario} | {len(runs)} | {statistics.median(health):.2f} s ({min(health):.2f}-{max(health):.2f}) "
            f"| {statistics.median(restore):.2f} s ({min(restore):.2f}-{max(restore):.2f}) | {states} |"
        )


if __name__ == "__main__":
    main()
