"""SeedVR2 video and image restoration: our own PyTorch implementation and its RunPod worker."""

__version__ = "0.1.0"
