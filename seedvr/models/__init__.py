"""Pure nn.Modules of SeedVR2: the NaDiT (v2 = 3B, v1 = 7B) and the causal video VAE."""

from seedvr.models.nadit import NaDiT, build_dit

__all__ = ["NaDiT", "build_dit"]
