"""Pure nn.Modules of SeedVR2: the NaDiT (v2 = 3B, v1 = 7B) and the causal video VAE."""

from seedvr.models.nadit import NaDiT, build_dit
from seedvr.models.vae import VideoVAE, build_vae

__all__ = ["NaDiT", "VideoVAE", "build_dit", "build_vae"]
