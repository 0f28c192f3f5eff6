"""One rank of tests/test_parallel.py, started by torchrun: runs the sharded NaDiT and the split VAE
on the fixture models in groups of every size up to the world size, and writes this rank's results
to OUT_DIR/sp{size}_rank{r}.safetensors.

usage: sp_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seedvr import parallel  # noqa: E402
from seedvr.models import build_dit  # noqa: E402
from seedvr.models.vae import build_vae  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# nonmultiple_window: 8 regular and 8 shifted windows of unequal sizes (not a multiple of 3 ranks);
# packed_two_videos: two samples, windows of both on one rank; single_image: one window, idle ranks.
DIT_CASES = ("nonmultiple_window", "packed_two_videos", "single_image")
SPLITS = ("windows", "rows")  # parallel.run_dit's two ways to split a forward, each forced on every case


def fixture_dit(arch: str) -> torch.nn.Module:
    folder = FIXTURES / f"dit_{arch}"
    model = build_dit(arch, json.loads((folder / "config.json").read_text())).eval()
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    return model


def load_case(arch: str, name: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / f"dit_{arch}" / f"case_{name}.safetensors")


def tiny_vae() -> torch.nn.Module:
    vae = build_vae(json.loads((FIXTURES / "vae" / "config.json").read_text())).eval()
    vae.load_state_dict(load_file(FIXTURES / "vae" / "weights.safetensors"), strict=True)
    return vae


def vae_jobs() -> list[Callable[[torch.nn.Module], torch.Tensor]]:
    """Independent VAE pieces of different output shapes: latent tiles to decode, clips to encode."""
    gen = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 16, 2, 4, 6, generator=gen)
    clips = [torch.rand(1, 3, frames, 16, 16, generator=gen) * 2 - 1 for frames in (5, 1)]
    tiles = [latent[..., :2, :4], latent[:, :, :1, 2:, 2:], latent[..., :, 1:4]]
    return [lambda vae, z=z: vae.decode(z) for z in tiles] + [
        lambda vae, x=x: vae.encode(x, noise=torch.zeros(1, 16, (x.shape[2] - 1) // 4 + 1, 2, 2)) for x in clips
    ]


def run_all(ranks: parallel.Ranks) -> dict[str, torch.Tensor]:
    results = {}
    for arch in ("v2", "v1"):
        model = fixture_dit(arch)
        for name in DIT_CASES:
            case = load_case(arch, name)
            for split in (None, *SPLITS):  # None: the split parallel.cheaper_split picks
                parallel.WORK.clear()
                with torch.no_grad():
                    out = parallel.run_dit(model, case["vid"], case["txt"], case["vid_shape"], case["txt_shape"],
                                           case["timestep"], ranks, split=split)
                key = f"dit_{arch}_{name}" + (f"_{split}" if split else "")
                results[key] = out
                results[f"work_{key}"] = torch.tensor([parallel.WORK["dit_token_blocks"]])
    vae, jobs = tiny_vae(), vae_jobs()
    for i, y in enumerate(parallel.split_work(lambda job: job(vae), jobs, ranks, everywhere=True)):
        results[f"vae_all_{i}"] = y
    for i, y in enumerate(parallel.split_work(lambda job: job(vae), jobs, ranks) or []):
        results[f"vae_main_{i}"] = y
    return results


def main(out_dir: Path) -> None:
    """Sequence-parallel groups of 1, 2, ... world-size ranks (ranks 0..n-1), one after the other:
    one launch covers every size; the smaller groups check that any group works, not only WORLD."""
    world = parallel.init_from_env()
    for size in range(1, world.size + 1):
        if size == world.size:
            ranks = world  # the WORLD group, as init_from_env gives it
        else:
            group = dist.new_group(list(range(size)))  # collective: every rank creates every group
            ranks = parallel.Ranks(group=group, rank=world.rank, size=size, device=world.device)
        if world.rank < size:
            results = run_all(ranks)
            save_file({k: v.contiguous() for k, v in results.items()}, out_dir / f"sp{size}_rank{world.rank}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
