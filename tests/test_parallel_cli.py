"""`torchrun -m seedvr restore ... --sp-size N` end to end on the CPU (gloo over loopback) with the tiny
models: 2 and 3 ranks give the one-process output, for a video cut into 4 temporal windows (2 ranks:
two rounds of one window per rank; 3 ranks: one round, then the last window on all ranks together),
for an image of 4 DiT windows (3 ranks: uneven), and for an image whose VAE runs in 20 tiles dealt to
the ranks. Each rank's work counts (printed by rank 0) show that the work is split, not repeated; a
failure injected on rank 1 stops the job on every rank with one error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from mediagen import make_image, make_video
from seedvr import media
from seedvr.cli import main
from tiny import write_tiny_setup
from worker_helpers import free_port

RANKS = (2, 3)
# 17 frames, windows of 5 sharing 1 -> 4 windows of 2 latent frames, each 2 DiT windows along time.
# crf 0 is lossless: a lossy encode can turn a one-level difference of the restored frames (float
# round-off of the split DiT) into larger differences after decoding; lossless compares the frames.
VIDEO_ARGS = ["--res-h", "48", "--res-w", "64", "--batch-frames", "5", "--overlap-frames", "1", "--seed", "5",
              "--crf", "0"]
VIDEO_WINDOWS, VIDEO_WINDOW_TOKENS = 4, 2 * 3 * 4  # latent 2 x 6 x 8, patches of 2x2
BLOCKS = 4  # of the fixture DiT
# 512x384 -> a 24x32 token grid: 2x2 regular and 2x2 shifted windows.
IMAGE_ARGS = ["--res-h", "384", "--res-w", "512", "--seed", "5"]
# 256x192 in tiles of 64 (overlap 16): 4 x 5 = 20 encode tiles and 20 decode tiles split over the ranks.
TILED_ARGS = ["--res-h", "192", "--res-w", "256", "--seed", "5", "--vae-tile", "64"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sp_cli")
    config_dir, ckpt_dir = write_tiny_setup(root / "tiny")
    return {
        "root": root,
        "common": ["--config-dir", str(config_dir), "--ckpt-dir", str(ckpt_dir), "--device", "cpu", "--vae-tile", "0"],
        "video": make_video(root / "clip.mp4", frames=17, width=64, height=48),
        "image": make_image(root / "still.png", width=64, height=48),
    }


def torchrun(ranks: int, args: list[str], entry: tuple[str, ...] = ("-m", "seedvr"), **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *entry, "restore", *args, "--sp-size", str(ranks)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])} | env
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def work(stdout: str) -> list[dict[str, int]]:
    """Rank 0's `work per rank` line: each rank's counts, in rank order."""
    (line,) = [line for line in stdout.splitlines() if line.startswith("work per rank: ")]
    counts = json.loads(line.removeprefix("work per rank: "))
    return [counts[str(rank)] for rank in range(len(counts))]


RUNS = {"video": ("video", VIDEO_ARGS, "mp4"), "image": ("image", IMAGE_ARGS, "png"), "tiled": ("image", TILED_ARGS, "png")}


@pytest.fixture(scope="module")
def outputs(setup) -> Callable[[str, int], tuple[Path, str]]:
    """`outputs(kind, ranks)`: the output file and stdout of one run, made on first use (so that `-k`
    runs only the launches it needs); 1 rank is the plain `main`, without torchrun."""
    done: dict[tuple[str, int], tuple[Path, str]] = {}

    def get(kind: str, ranks: int) -> tuple[Path, str]:
        if (kind, ranks) not in done:
            source, args, suffix = RUNS[kind]
            folder = setup["root"] / kind
            folder.mkdir(exist_ok=True)
            dst = folder / f"sp{ranks}.{suffix}"
            args = [str(setup[source]), str(dst), *setup["common"], *args]  # a later --vae-tile wins
            if ranks == 1:
                assert main(["restore", *args]) == 0
                done[kind, ranks] = (dst, "")
            else:
                run = torchrun(ranks, args)
                assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
                done[kind, ranks] = (dst, run.stdout)
        return done[kind, ranks]

    return get


def video_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def assert_nearly_equal(got: np.ndarray, want: np.ndarray, levels: int = 1) -> None:
    """Float32 round-off of the split DiT may flip a quantisation step, rarely and by one level (in RGB;
    through a video's YUV 4:2:0 a one-level step of a pixel can come back as two)."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= levels and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.mark.slow  # the torchrun launches: about a minute on 2 cores
@pytest.mark.parametrize("ranks", RANKS)
def test_video_over_ranks_equals_one_process(outputs, ranks: int) -> None:
    (want, _), (got, stdout) = outputs("video", 1), outputs("video", ranks)
    info = media.probe(got)
    assert (info.kind, info.frames, info.width, info.height, info.has_audio) == ("video", 17, 64, 48, True)
    assert_nearly_equal(video_frames(got), video_frames(want), levels=2)
    # Only rank 0 prints the summary, and only it writes: the folder holds one output per run.
    assert stdout.count("video: 64x48 -> 64x48, 17 frame(s)") == 1
    assert f"{ranks} sequence-parallel ranks" in stdout
    assert {p.name for p in got.parent.iterdir()} <= {f"sp{n}.mp4" for n in (1, *RANKS)}
    # Full rounds: one window per rank, alone; the rest (3 ranks: the 4th window) on all ranks together.
    solo, together = divmod(VIDEO_WINDOWS, ranks)
    counts = work(stdout)
    assert [c.get("windows", 0) for c in counts] == [solo] * ranks
    assert [c.get("group_windows", 0) for c in counts] == [together] * ranks
    dit = [c["dit_token_blocks"] for c in counts]
    assert sum(dit) == VIDEO_WINDOWS * VIDEO_WINDOW_TOKENS * BLOCKS  # every token of every block once


@pytest.mark.slow
@pytest.mark.parametrize("ranks", RANKS)
def test_image_over_ranks_equals_one_process(outputs, ranks: int) -> None:
    (want, _), (got, stdout) = outputs("image", 1), outputs("image", ranks)
    assert_nearly_equal(media.read_image(got), media.read_image(want))
    assert stdout.count("image: 64x48 -> 512x384") == 1
    dit = [c["dit_token_blocks"] for c in work(stdout)]  # one window on all ranks: the DiT rows are split
    assert sum(dit) == 24 * 32 * BLOCKS and 0 < min(dit) and max(dit) < 24 * 32 * BLOCKS * 0.7


@pytest.mark.slow
@pytest.mark.parametrize("ranks", RANKS)
def test_vae_tiles_over_ranks_equal_one_process(outputs, ranks: int) -> None:
    (want, _), (got, stdout) = outputs("tiled", 1), outputs("tiled", ranks)
    assert_nearly_equal(media.read_image(got), media.read_image(want))
    assert stdout.count("image: 64x48 -> 256x192") == 1
    pieces = [c["pieces"] for c in work(stdout)]  # 20 encode and 20 decode tiles, dealt
    assert sum(pieces) == 40 and max(pieces) - min(pieces) <= ranks


@pytest.mark.slow
def test_a_failure_on_rank_1_stops_every_rank_with_one_error(setup, tmp_path) -> None:
    dst = tmp_path / "failed.mp4"
    done = torchrun(2, [str(setup["video"]), str(dst), *setup["common"], *VIDEO_ARGS], SEEDVR_SP_FAULT="1:2")
    assert done.returncode != 0
    # Rank 0 (the one that answers) names the failing rank and its error; rank 1 prints its own unless
    # torchrun has ended it first (it ends every rank once one exits with an error).
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    fault = "injected fault (SEEDVR_SP_FAULT) on rank 1 before window 2"
    assert f"error: rank 0: sequence-parallel rank 1 of 2 failed: RuntimeError: {fault}" in errors, done.stderr[-3000:]
    assert all(line.endswith(fault) for line in errors)
    assert not dst.exists()


@pytest.mark.slow
def test_nothing_holds_the_process_group_once_main_returns(setup, tmp_path) -> None:
    """A group alive at interpreter exit aborted about one 3-rank run in seven (gloo's threads dropping
    tensors during finalization); exit codes alone cannot show it reliably, the references can."""
    args = [str(setup["image"]), str(tmp_path / "o.png"), *setup["common"], *IMAGE_ARGS]
    run = torchrun(2, args, entry=(str(Path(__file__).with_name("cli_exit_rank.py")),))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = sorted(line for line in run.stdout.splitlines() if "references to the group" in line)
    assert lines == [f"rank {r}: 0 references to the group after main" for r in range(2)], run.stdout[-3000:]


def test_sp_size_must_match_the_launch(setup, tmp_path, monkeypatch, capsys) -> None:
    args = ["restore", str(setup["image"]), str(tmp_path / "o.png"), *setup["common"]]
    assert main([*args, "--sp-size", "2"]) == 1
    assert "--sp-size 2 must equal the number of torchrun processes (not started by torchrun)" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main([*args, "--sp-size", "2"]) == 1
    assert "(torchrun started 3 processes): run torchrun --nproc-per-node 2" in capsys.readouterr().err
    assert main([*args, "--sp-size", "0"]) == 1
    assert "--sp-size must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
