"""Frame geometry: output size, resize, the model's 16-pixel grid (crop or pad), uint8 <-> float.

Frames are ``[T, 3, H, W]`` tensors. Float frames are in [0, 1] until :func:`to_model_range` maps them
to the [-1, 1] range the VAE expects.
"""

import math

import torch
import torch.nn.functional as F

from .prefetch import to_host

GRID = 16
"""The VAE downsamples by 8 and the DiT patches latents by 2: frames must be multiples of 16."""


def area_size(height: int, width: int, res_h: int, res_w: int) -> tuple[int, int]:
    """Size with about ``res_h * res_w`` pixels and the input's aspect ratio (official ``AreaResize``).

    Only the product ``res_h * res_w`` matters, so 1280x720 means "720p-class" for landscape and
    portrait alike. The area goes through ``sqrt`` and back exactly as the official transform does,
    so Python's rounding of the half-way cases agrees with it.
    """
    max_area = math.sqrt(res_h * res_w) ** 2
    scale = math.sqrt(max_area / (height * width))
    return round(height * scale), round(width * scale)


def scale_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size of the input multiplied by ``scale`` on both axes."""
    return round(height * scale), round(width * scale)


def even(n: int) -> int:
    """Largest even number <= n, at least 2 (H.264 with yuv420p needs even sizes)."""
    return max(2, n - n % 2)


def output_size(
    height: int, width: int, res_h: int, res_w: int, scale: float | None = None
) -> tuple[int, int]:
    """User-mode output ``(h, w)``: area rule (or ``scale``), then each side rounded down to even."""
    h, w = scale_size(height, width, scale) if scale is not None else area_size(height, width, res_h, res_w)
    return even(h), even(w)


def to_unit_float(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` -> float32 in [0, 1] (the official ``/255``)."""
    return frames_u8.to(torch.float32) / 255.0


def resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing, then clamp to [0, 1].

    ``antialias=True`` makes torch use the PIL-style cubic (a = -0.5), which is what torchvision's
    tensor resize runs in the official pipeline (plain bicubic uses a = -0.75 and differs).
    """
    if tuple(frames.shape[-2:]) != tuple(size):
        frames = F.interpolate(frames, size=size, mode="bicubic", antialias=True, align_corners=False)
    return frames.clamp(0.0, 1.0)


def center_crop_to_grid(frames: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """Official ``DivisibleCrop``: centre crop down to multiples of ``grid`` (rounded offsets)."""
    height, width = frames.shape[-2:]
    crop_h, crop_w = height - height % grid, width - width % grid
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return frames[..., top : top + crop_h, left : left + crop_w]


def grid_padding(height: int, width: int, grid: int = GRID) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding that brings a frame up to multiples of ``grid``,
    split evenly so the picture stays centred in the model's view."""
    pad_h, pad_w = -height % grid, -width % grid
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def pad_to_grid(frames: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Replicate-pad ``[T, C, H, W]`` frames (valid for any pad width, unlike reflect)."""
    if not any(pads):
        return frames
    return F.pad(frames, pads, mode="replicate")


def unpad(frames: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop away what :func:`pad_to_grid` added (works on any ``[..., H, W]`` tensor)."""
    left, right, top, bottom = pads
    height, width = frames.shape[-2:]
    return frames[..., top : height - bottom, left : width - right]


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the official ``Normalize(0.5, 0.5)``)."""
    return frames * 2.0 - 1.0


def to_uint8_hwc(frames: torch.Tensor) -> torch.Tensor:
    """Float ``[T, 3, H, W]`` in [-1, 1] -> uint8 ``[T, H, W, 3]`` on the CPU.

    Same order of operations as the official post-processing: clamp, ``*0.5 + 0.5``, ``*255``, round.
    """
    frames = frames.permute(0, 2, 3, 1).float().clamp(-1.0, 1.0)
    return to_host(frames.mul(0.5).add(0.5).mul(255.0).round().to(torch.uint8))
