"""Noise that is a pure function of (seed, purpose, where it sits in the video).

Every random tensor of a restoration is drawn from its own generator, seeded from the job's seed, the
purpose of the draw (the VAE posterior or the DiT's ``x_T``) and the first input frame of the window it
belongs to. A window therefore gets the same noise whichever process computes it, in whatever order,
and whatever other windows exist: a sequence-parallel rank, a fanned-out serverless worker or a resumed
run reproduce that part of a whole-video run exactly. Tiles and spatial bands slice the window's
full-frame tensor, so they need no key of their own.

Draws are made on the CPU in fp32 and then moved and cast, so the values do not depend on the device.
"""

import hashlib
from typing import Literal

import torch

Purpose = Literal["posterior", "x_T"]
PURPOSES: tuple[Purpose, ...] = ("posterior", "x_T")


def noise_seed(seed: int, purpose: Purpose, first_frame: int) -> int:
    """A 63-bit generator seed from the key; a hash, so that neighbouring keys give unrelated streams."""
    if purpose not in PURPOSES:
        raise ValueError(f"noise purpose must be one of {PURPOSES}, got {purpose!r}")
    if first_frame < 0:
        raise ValueError(f"first_frame must be >= 0, got {first_frame}")
    digest = hashlib.blake2b(f"seedvr2:{seed}:{purpose}:{first_frame}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def window_noise(
    seed: int,
    purpose: Purpose,
    first_frame: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal noise of ``shape`` for the window starting at input frame ``first_frame``."""
    generator = torch.Generator().manual_seed(noise_seed(seed, purpose, first_frame))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)
