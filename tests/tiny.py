"""Tiny SeedVR2 models for CPU tests, built from the fixture configs and weights.

`tiny_models()` gives ready `RestorationModels` in-process. `write_tiny_setup(root)` lays out a config
folder (configs_3b/main.yaml, configs_7b/main.yaml: the real files with the fixture `dit.model` /
`vae.model`) and a flat checkpoint folder with the real file names (.pth state dicts, random
pos_emb.pt / neg_emb.pt of the fixtures' text width), so the CLI and the worker load them like the
real ones. The 7B "sharp" checkpoint is the 7B fixture with slightly changed weights, so that
choosing the variant makes a visible difference.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from seedvr.checkpoints import load_weights
from seedvr.models import build_dit
from seedvr.models.vae import build_vae
from seedvr.pipeline import RestorationModels

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TXT_DIM = 48  # txt_in_dim of the fixture DiTs
POS_TOKENS, NEG_TOKENS = 58, 64  # the real pos_emb.pt / neg_emb.pt lengths
DITS = {"3b": ("v2", FIXTURES / "dit_v2"), "7b": ("v1", FIXTURES / "dit_v1")}


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def text_embedding(tokens: int = POS_TOKENS, seed: int = 0) -> torch.Tensor:
    """A random stand-in for pos_emb.pt (bf16 like the release), scaled like unit-variance features."""
    return torch.randn(tokens, TXT_DIM, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@functools.cache
def _modules(model: str, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    arch, folder = DITS[model]
    with torch.device("meta"):
        dit = build_dit(arch, fixture_config(folder.name))
        vae = build_vae(fixture_config("vae"))
    load_weights(dit, folder / "weights.safetensors", dtype, device)
    load_weights(vae, FIXTURES / "vae" / "weights.safetensors", dtype, device)
    return dit.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def tiny_models(model: str = "3b", device: str = "cpu", dtype: torch.dtype = torch.float32) -> RestorationModels:
    """Fixture DiT (3b = v2, 7b = v1) and VAE, with a random 58-token text embedding."""
    dit, vae = _modules(model, device, dtype)
    text = text_embedding().to(device=device, dtype=dtype)
    return RestorationModels(dit=dit, vae=vae, text_emb=text, device=device, dtype=dtype)


def _write_config(config_dir: Path, model: str) -> None:
    arch, folder = DITS[model]
    config = yaml.safe_load((REPO / f"configs_{model}" / "main.yaml").read_text())
    config["dit"]["model"] = fixture_config(folder.name)
    config["vae"]["model"] = fixture_config("vae")
    assert config["dit"]["arch"] == arch
    target = config_dir / f"configs_{model}" / "main.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))


def _write_checkpoints(ckpt_dir: Path) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(load_file(FIXTURES / "dit_v2" / "weights.safetensors"), ckpt_dir / "seedvr2_ema_3b.pth")
    v1 = load_file(FIXTURES / "dit_v1" / "weights.safetensors")
    torch.save(v1, ckpt_dir / "seedvr2_ema_7b.pth")
    sharp = {k: v * 1.05 if k.endswith("weight") and v.is_floating_point() else v for k, v in v1.items()}
    torch.save(sharp, ckpt_dir / "seedvr2_ema_7b_sharp.pth")
    torch.save(load_file(FIXTURES / "vae" / "weights.safetensors"), ckpt_dir / "ema_vae.pth")
    torch.save(text_embedding(POS_TOKENS, seed=0), ckpt_dir / "pos_emb.pt")
    torch.save(text_embedding(NEG_TOKENS, seed=1), ckpt_dir / "neg_emb.pt")


def write_tiny_setup(root: str | Path) -> tuple[Path, Path]:
    """Write ``root/configs`` and ``root/ckpts``; returns ``(config_dir, ckpt_dir)``."""
    root = Path(root)
    config_dir, ckpt_dir = root / "configs", root / "ckpts"
    for model in DITS:
        _write_config(config_dir, model)
    _write_checkpoints(ckpt_dir)
    return config_dir, ckpt_dir


def write_fake_cache(cache: str | Path, ckpt_dir: Path, repo_id: str, filenames: list[str], revision: str = "0" * 40) -> Path:
    """A Hugging Face hub cache holding `filenames` (taken from `ckpt_dir`) as `repo_id`'s snapshot `revision`,
    laid out as RunPod's cached models are: blobs, snapshot entries linking to them, refs/main naming the
    snapshot. Returns the snapshot folder."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in filenames:
        blob = repo / "blobs" / f"{revision[:8]}-{name}"
        blob.write_bytes((ckpt_dir / name).read_bytes())
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
