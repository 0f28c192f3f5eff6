"""Colour correction of the restored frames against the low-quality input (spec §7 step 12).

The one-step model can shift colours; the fix keeps the restored detail (high frequencies or
normalised values) and takes the global colour from the input. Both tensors are ``[T, 3, H, W]`` in
[-1, 1] at the same resolution; the content is the *unclipped* decoder output. Work is per frame.
"""

from typing import Callable

import torch
import torch.nn.functional as F

COLOR_FIXES = ("wavelet", "adain", "none")
WAVELET_LEVELS = 5


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depth-wise 3x3 binomial blur with holes (à trous), replicate padding of the same width."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=x.dtype, device=x.device)
    kernel = (kernel / 16.0).expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=dilation)


def low_frequencies(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The residual after ``levels`` wavelet levels (dilations 1, 2, 4, ...)."""
    for level in range(levels):
        x = _blur(x, 2**level)
    return x


def wavelet_color_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``content`` + low frequencies of ``style`` (StableSR's wavelet fix)."""
    content, style = content.float(), style.float()
    return content - low_frequencies(content) + low_frequencies(style)


Moments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def frame_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) variance per frame and channel, shaped to broadcast over ``[T, C, H, W]``."""
    return x.mean(dim=(-2, -1), keepdim=True), x.var(dim=(-2, -1), keepdim=True)


def adain_color_fix(
    content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5, moments: Moments = frame_moments
) -> torch.Tensor:
    """Per frame and channel: give ``content`` the mean and standard deviation of ``style``.

    ``moments`` computes them (a band of rows passes moments reduced over all ranks' bands)."""
    content, style = content.float(), style.float()
    (c_mean, c_var), (s_mean, s_var) = moments(content), moments(style)
    return (content - c_mean) / (c_var + eps).sqrt() * (s_var + eps).sqrt() + s_mean


def _no_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    return content.float()


_FIXES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "wavelet": wavelet_color_fix,
    "adain": adain_color_fix,
    "none": _no_fix,
}


def color_fix(name: str, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Apply the named fix (``wavelet``, ``adain`` or ``none``); result in float32."""
    if name not in _FIXES:
        raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {name!r}")
    if content.shape != style.shape:
        raise ValueError(f"color fix needs equal shapes, got {tuple(content.shape)} and {tuple(style.shape)}")
    return _FIXES[name](content, style)
