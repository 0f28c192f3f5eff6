"""Peak memory of one VAE encode + decode per rank, one process against N band ranks (seedvr/bands.py).

Real-width VAE with random weights on the CPU (gloo, one thread per rank). Each rank reports the growth of
its peak RSS over what it held before the VAE ran (model and inputs), i.e. the activations (Linux only).

usage: MALLOC_MMAP_THRESHOLD_=65536 python scripts/bands_memory.py [--ranks 2] [--size 256] [--frames 1]
(the fixed mmap threshold makes glibc return freed tensors at once, so the RSS follows the live tensors)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seedvr import bands, parallel  # noqa: E402
from seedvr.models.vae import VAEParams, VideoVAE  # noqa: E402


def status_mib(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """Restart the peak RSS count (Linux: clear_refs 5) and return the resident MiB now."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


def run(rank: int, size: int, store: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    group = None
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
        group = dist.group.WORLD
    ranks = parallel.Ranks(group=group, rank=rank, size=size, device=torch.device("cpu"))
    vae = VideoVAE(VAEParams()).eval().requires_grad_(False)
    rows = args.size // 8
    grid = bands.Bands.even(ranks, rows, rows)
    start, stop = grid.span(8)
    video = torch.rand(1, 3, args.frames, args.size, args.size)[..., start:stop, :].clone()
    noise = torch.randn(1, 16, (args.frames - 1) // 4 + 1, rows, rows)
    before = reset_peak()
    latent = bands.gather_rows(bands.encode_band(vae, video, noise, grid), grid.spans(), ranks, everywhere=True)
    bands.decode_band(vae, latent, grid)
    print(f"{size} rank(s), rank {rank}: band {stop - start} of {args.size} rows, activations peak {status_mib('VmHWM') - before:.0f} MiB")
    if group is not None:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="square frame side in pixels (multiple of 8)")
    parser.add_argument("--frames", type=int, default=1, help="4n+1 frames")
    args = parser.parse_args()
    store = str(Path(tempfile.mkdtemp()) / "store")
    run(0, 1, store, args)
    mp.spawn(run, args=(args.ranks, store, args), nprocs=args.ranks)


if __name__ == "__main__":
    main()
