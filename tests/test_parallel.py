"""Window-sharded sequence parallelism (seedvr/parallel.py): the split itself, the token exchange
simulated in-process, and groups of 1, 2 and 3 ranks under torchrun (gloo over loopback) against the
plain forward, the official fixtures, and the VAE pieces computed in-process."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sp_worker import DIT_CASES, SPLITS, fixture_dit, load_case, tiny_vae, vae_jobs  # noqa: E402
from seedvr import parallel  # noqa: E402

WORKER = Path(__file__).resolve().parent / "sp_worker.py"
REGULAR = ((4, 3, 3), "720pwin_by_size_bysize")
SHIFTED = ((4, 3, 3), "720pswin_by_size_bysize")


def plain(model: torch.nn.Module, case: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(case["vid"], case["txt"], case["vid_shape"], case["txt_shape"], case["timestep"])


@pytest.fixture(scope="module")
def plain_outputs() -> dict[str, torch.Tensor]:
    out = {}
    for arch in ("v2", "v1"):
        model = fixture_dit(arch)
        out |= {f"dit_{arch}_{name}": plain(model, load_case(arch, name)) for name in DIT_CASES}
    return out


@pytest.mark.parametrize(
    "sizes,ranks,bounds",
    [
        ([10] * 8, 3, [0, 3, 5, 8]),
        ([10] * 9, 3, [0, 3, 6, 9]),
        ([40, 5, 5, 5, 5, 20], 2, [0, 1, 6]),
        ([7], 3, [0, 0, 1, 1]),  # fewer windows than ranks: the others idle
        ([3, 4], 1, [0, 2]),
    ],
)
def test_assign_windows(sizes: list[int], ranks: int, bounds: list[int]) -> None:
    assert parallel.assign_windows(sizes, ranks) == bounds


def test_assign_windows_balances_tokens() -> None:
    gen = torch.Generator().manual_seed(0)
    for ranks in (2, 3, 5, 8):
        sizes = torch.randint(50, 900, (37,), generator=gen).tolist()
        bounds = parallel.assign_windows(sizes, ranks)
        loads = [sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:])]
        assert bounds[0] == 0 and bounds[-1] == len(sizes) and bounds == sorted(bounds)
        assert max(abs(load - sum(sizes) / ranks) for load in loads) <= max(sizes)


def shards(case_name: str, size: int) -> dict:
    case = load_case("v2", case_name)
    _, _, ctx, _ = fixture_dit("v2").prepare(case["vid"], case["txt"], case["vid_shape"], case["txt_shape"], case["timestep"])
    return {key: [parallel.make_shard(ctx, key, r, size) for r in range(size)] for key in (REGULAR, SHIFTED)}


@pytest.mark.parametrize("case_name", ["nonmultiple_window", "packed_two_videos"])
def test_shards_partition_tokens_and_windows(case_name: str) -> None:
    for key, parts in shards(case_name, 3).items():
        tokens = torch.cat([s.tokens for s in parts])
        assert sorted(tokens.tolist()) == list(range(tokens.numel())), key
        for r, s in enumerate(parts):
            assert (s.owner[s.tokens] == r).all() and s.position[s.tokens].tolist() == list(range(s.tokens.numel()))
            assert s.layout.vid_rows.numel() == s.tokens.numel() == s.angles["vid"].shape[0]
        assert [sum(c) for c in zip(*(s.layout.window_count for s in parts))] == parts[0].window_total
        assert all(s.layout.seq_lens for s in parts)  # 8 windows of unequal size, 3 ranks: nobody idles


@pytest.mark.parametrize("size", [2, 3])
def test_exchange_moves_every_token_to_its_new_row(size: int) -> None:
    """The all_to_all of the real runs, simulated: rank r's split r of its sends lands on rank s."""
    split = shards("nonmultiple_window", size)
    features = torch.randn(split[REGULAR][0].owner.numel(), 5)
    for src_key, dst_key in ((REGULAR, SHIFTED), (SHIFTED, REGULAR)):
        src, dst = split[src_key], split[dst_key]
        plans = [parallel.make_exchange(src[r], dst[r], size) for r in range(size)]
        sent = [features[src[r].tokens][p.send_index].split(p.send_counts) for r, p in enumerate(plans)]
        for r, p in enumerate(plans):
            received = torch.cat([sent[s][r] for s in range(size)])
            assert [len(sent[s][r]) for s in range(size)] == p.recv_counts
            out = torch.empty_like(received)
            out[p.recv_position] = received
            assert torch.equal(out, features[dst[r].tokens])
        moved = sum(sum(c for s, c in enumerate(p.send_counts) if s != r) for r, p in enumerate(plans))
        assert plans[0].moves and 0 < moved < features.shape[0]


def test_without_process_group_runs_the_model() -> None:
    model = fixture_dit("v1")
    case = load_case("v1", "single_image")
    alone = parallel.Ranks(group=None, rank=0, size=1, device=torch.device("cpu"))
    with torch.no_grad():
        out = parallel.run_dit(model, case["vid"], case["txt"], case["vid_shape"], case["txt_shape"], case["timestep"], alone)
    assert torch.equal(out, plain(model, case))
    with pytest.raises(ValueError, match="ranks.size is 2"):
        parallel.run_dit(model, case["vid"], case["txt"], case["vid_shape"], case["txt_shape"], case["timestep"],
                         parallel.Ranks(group=None, rank=0, size=2, device=torch.device("cpu")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """One torchrun launch of 3 ranks on loopback; the worker runs groups of 1, 2 and 3 ranks."""
    out_dir = tmp_path_factory.mktemp("sp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), str(WORKER), str(out_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out_dir


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranks_agree_with_one_process(launched: Path, plain_outputs, size: int) -> None:
    """Every rank holds the plain forward's output (float32 round-off) and the official one."""
    results = [load_file(launched / f"sp{size}_rank{r}.safetensors") for r in range(size)]
    for key, want in plain_outputs.items():
        arch, name = key.split("_", 2)[1:]
        for r, got in enumerate(results):
            torch.testing.assert_close(got[key], want, atol=1e-5, rtol=1e-5, msg=f"{key} on rank {r}")
        torch.testing.assert_close(results[0][key], load_case(arch, name)["out"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("split", SPLITS)
def test_both_splits_agree_with_one_process(launched: Path, plain_outputs, size: int, split: str) -> None:
    """Whole windows and rows, each forced on every case (one window, unequal windows, two videos)."""
    results = [load_file(launched / f"sp{size}_rank{r}.safetensors") for r in range(size)]
    for key, want in plain_outputs.items():
        for r, got in enumerate(results):
            torch.testing.assert_close(got[f"{key}_{split}"], want, atol=1e-5, rtol=1e-5, msg=f"{key} {split} rank {r}")


@pytest.mark.parametrize("size", [2, 3])
def test_rows_split_every_forward_evenly(launched: Path, size: int) -> None:
    """By rows, each rank runs the blocks on its own share of the tokens, about 1/size of them, even for
    an image of one window (where whole windows leave all but one rank idle)."""
    results = [load_file(launched / f"sp{size}_rank{r}.safetensors") for r in range(size)]
    for arch in ("v2", "v1"):
        blocks = len(fixture_dit(arch).blocks)
        for name in DIT_CASES:
            tokens = int(load_case(arch, name)["vid_shape"].prod(-1).sum()) // 4  # patch 2
            work = [int(got[f"work_dit_{arch}_{name}_rows"]) for got in results]
            assert sum(work) == tokens * blocks, (arch, name)
            assert max(work) <= math.ceil(tokens / size) * blocks, (arch, name, work)
        image = [int(got[f"work_dit_{arch}_single_image_windows"]) for got in results]
        assert sorted(image)[:-1] == [0] * (size - 1)  # one window: one rank does it all


@pytest.mark.parametrize(
    "name,picks", [("single_image", ["rows", "rows", "rows"]), ("nonmultiple_window", ["windows"] * 3),
                   ("packed_two_videos", ["windows", "rows", "windows"])],
)
def test_cheaper_split(name: str, picks: list[str]) -> None:
    """One window: rows. Eight windows: whole windows on 2-4 ranks. Two videos in windows of 96, 96, 96,
    60 and 60 tokens: whole windows on 2 and 4 ranks, rows on 3 (whole windows would give one rank 192)."""
    model, case = fixture_dit("v2"), load_case("v2", name)
    _, _, ctx, _ = model.prepare(case["vid"], case["txt"], case["vid_shape"], case["txt_shape"], case["timestep"])
    assert [parallel.cheaper_split(model, ctx, size) for size in (2, 3, 4)] == picks


@pytest.fixture(scope="module")
def vae_outputs() -> list[torch.Tensor]:
    vae = tiny_vae()
    return [job(vae) for job in vae_jobs()]


@pytest.mark.parametrize("size", [1, 2, 3])
def test_split_vae_work_matches_one_process(launched: Path, vae_outputs, size: int) -> None:
    """Five pieces of different shapes dealt to the ranks, gathered everywhere or on the main rank."""
    results = [load_file(launched / f"sp{size}_rank{r}.safetensors") for r in range(size)]
    for i, want in enumerate(vae_outputs):
        assert all(torch.equal(got[f"vae_all_{i}"], want) for got in results), i
        assert torch.equal(results[0][f"vae_main_{i}"], want)
        assert all(f"vae_main_{i}" not in got for got in results[1:])
