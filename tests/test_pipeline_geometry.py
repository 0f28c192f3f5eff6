"""Output size rules, resize, the 16-pixel grid, colour fixes."""

import numpy as np
import pytest
import torch

from seedvr.pipeline import geometry
from seedvr.pipeline.colorfix import adain_color_fix, color_fix, wavelet_color_fix


@pytest.mark.parametrize(
    "size, res, expected, cropped",
    [
        ((480, 640), (720, 1280), (831, 1109), (816, 1104)),  # spec §7 step 4
        ((1080, 1920), (1080, 1920), (1080, 1920), (1072, 1920)),
        ((1280, 720), (720, 1280), (1280, 720), (1280, 720)),  # portrait keeps its orientation
        ((24, 40), (64, 96), (61, 101), (48, 96)),  # e2e fixture
    ],
)
def test_area_size_follows_official_rule(size, res, expected, cropped):
    assert geometry.area_size(*size, *res) == expected
    frames = torch.zeros(1, 3, *expected)
    assert tuple(geometry.center_crop_to_grid(frames).shape[-2:]) == cropped


def test_output_size_is_even_and_keeps_aspect():
    assert geometry.output_size(480, 640, 720, 1280) == (830, 1108)  # area rule, then even
    assert geometry.output_size(480, 640, 720, 1280, scale=2) == (960, 1280)
    assert geometry.output_size(47, 63, 0, 0, scale=3) == (140, 188)
    h, w = geometry.output_size(360, 640, 1280, 720)
    assert h % 2 == w % 2 == 0 and abs(w / h - 640 / 360) < 0.01


def test_pad_to_grid_and_back_loses_nothing():
    frames = torch.rand(2, 3, 30, 50)
    pads = geometry.grid_padding(30, 50)
    padded = geometry.pad_to_grid(frames, pads)
    assert padded.shape[-2:] == (32, 64)
    assert pads == (7, 7, 1, 1)
    torch.testing.assert_close(geometry.unpad(padded, pads), frames, atol=0, rtol=0)
    latents = torch.rand(1, 2, 3, 32, 64)  # any [..., H, W]: a 5-D tensor is cut on its last two axes
    assert geometry.unpad(latents, pads).shape == (1, 2, 3, 30, 50)
    assert geometry.grid_padding(32, 64) == (0, 0, 0, 0)


def test_resize_uses_antialiased_bicubic_and_clamps():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:, :] = 1.0
    down = geometry.resize(x, (8, 8))
    assert down.min() >= 0 and down.max() <= 1
    plain = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False).clamp(0, 1)
    assert not torch.allclose(down, plain)  # a = -0.5 with antialias, not a = -0.75
    assert torch.equal(geometry.resize(x, (16, 16)), x)


def test_resize_samples_pixel_centres():
    """A ramp halved in width: away from the borders each output pixel is the mean position of its two
    source pixels (2i + 0.5), as with align_corners=False (pixel centres, the official transform)."""
    ramp = (torch.arange(16.0) / 15).view(1, 1, 1, 16).expand(1, 3, 4, 16)
    out = geometry.resize(ramp, (4, 8))[0, 0, 0] * 15
    torch.testing.assert_close(out[2:6], torch.tensor([4.5, 6.5, 8.5, 10.5]), atol=1e-4, rtol=0)


def test_unit_and_model_ranges():
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8)
    unit = geometry.to_unit_float(u8)
    assert unit.dtype == torch.float32 and unit.tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert geometry.to_model_range(torch.tensor([0.0, 0.25, 1.0])).tolist() == [-1.0, -0.5, 1.0]


def test_uint8_quantisation_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = geometry.to_uint8_hwc(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]


def _a_trous_kernel(dilations: tuple[int, ...]) -> np.ndarray:
    """1-D impulse response of the wavelet residual, built independently with numpy: the [1, 2, 1] / 4
    binomial with holes at each dilation, convolved together (the 2-D kernel is its outer product)."""
    kernel = np.array([1.0])
    for d in dilations:
        step = np.zeros(2 * d + 1)
        step[[0, d, 2 * d]] = 0.25, 0.5, 0.25
        kernel = np.convolve(kernel, step)
    return kernel


def test_wavelet_fix_moves_the_style_impulse_response_into_the_content():
    """An impulse far from the edges: the fix's output is exactly the 5-level a-trous kernel (dilations
    1, 2, 4, 8, 16: radius 31, variance 170.5 per axis) for a style impulse, and an impulse minus that
    kernel for a content impulse."""
    kernel = _a_trous_kernel((1, 2, 4, 8, 16))
    assert len(kernel) == 63 and (kernel * np.arange(-31, 32) ** 2).sum() == 170.5
    expected = np.zeros((80, 80))
    expected[9:72, 9:72] = np.outer(kernel, kernel)
    impulse, zeros = torch.zeros(1, 3, 80, 80), torch.zeros(1, 3, 80, 80)
    impulse[..., 40, 40] = 1.0
    from_style = color_fix("wavelet", zeros, impulse)
    from_content = color_fix("wavelet", impulse, zeros)
    for channel in range(3):
        np.testing.assert_allclose(from_style[0, channel].numpy(), expected, atol=1e-7)
        np.testing.assert_allclose(from_content[0, channel].numpy(), impulse[0, 0].numpy() - expected, atol=1e-7)


def test_wavelet_fix_pads_by_replicating_the_border():
    """A flat style stays flat up to the corners (zero padding would darken the border), and a flat
    content contributes nothing; a ramp across the frame keeps its mean."""
    style = torch.full((2, 3, 24, 40), -0.3)
    out = color_fix("wavelet", torch.full((2, 3, 24, 40), 0.6), style)
    torch.testing.assert_close(out, style, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 3, 40, 48, generator=g) * 0.2 + 0.5
    ramp = torch.full((2, 3, 40, 48), -0.3) + torch.linspace(-0.2, 0.2, 48)
    out = color_fix("wavelet", content, ramp)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), ramp.mean(dim=(-2, -1)), atol=0.02, rtol=0)


def test_adain_fix_golden_values():
    """Per channel: content [[0, 1], [2, 3]] (mean 1.5, unbiased variance 5/3) takes the style's mean 1
    and unbiased standard deviation 2; the content's shape, not the style's, survives."""
    content = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).expand(1, 3, 2, 2)
    style = torch.tensor([[0.0, 0.0], [0.0, 4.0]]).expand(1, 3, 2, 2)
    eps = 1e-5
    expected = (np.array([[0.0, 1.0], [2.0, 3.0]]) - 1.5) / np.sqrt(5 / 3 + eps) * np.sqrt(4 + eps) + 1
    out = color_fix("adain", content, style)
    for channel in range(3):
        np.testing.assert_allclose(out[0, channel].numpy(), expected, rtol=1e-6)
    g = torch.Generator().manual_seed(1)
    content, style = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g) * 0.3 + 0.2
    out = adain_color_fix(content, style)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), style.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1)), style.std(dim=(-2, -1)), atol=1e-3, rtol=1e-3)


def test_color_fix_dispatch():
    """Each name runs its own fix, checked by value: the three results differ on the same input."""
    g = torch.Generator().manual_seed(2)
    content, style = torch.randn(1, 3, 8, 8, generator=g), torch.randn(1, 3, 8, 8, generator=g) * 0.3 + 0.5
    none = color_fix("none", content, style)
    assert torch.equal(none, content) and none.dtype == torch.float32
    assert torch.equal(color_fix("wavelet", content, style), wavelet_color_fix(content, style))
    assert torch.equal(color_fix("adain", content, style), adain_color_fix(content, style))
    assert not torch.allclose(adain_color_fix(content, style), wavelet_color_fix(content, style), atol=1e-2)
    assert color_fix("adain", content.half(), style.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="color_fix must be one of wavelet, adain, none, got 'histogram'"):
        color_fix("histogram", content, style)
    with pytest.raises(ValueError, match="equal shapes"):
        color_fix("adain", content, style[..., :4])


def test_color_fixes_build_their_constants_on_the_frames_device():
    """The blur kernel follows the frames' device, not the default one (a CPU kernel beside CUDA frames
    fails): with "meta" as the default device, CPU frames still give real CPU values."""
    frames = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    expected = color_fix("wavelet", frames, frames.flip(-1))
    with torch.device("meta"):
        out = color_fix("wavelet", frames, frames.flip(-1))
    assert out.device.type == "cpu" and torch.equal(out, expected)
