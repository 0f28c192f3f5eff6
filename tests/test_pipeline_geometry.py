"""Output size rules, resize, the 16-pixel grid, colour fixes."""

import pytest
import torch

from seedvr.pipeline import geometry
from seedvr.pipeline.colorfix import adain_color_fix, color_fix, low_frequencies, wavelet_color_fix


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
    assert geometry.grid_padding(32, 64) == (0, 0, 0, 0)


def test_resize_uses_antialiased_bicubic_and_clamps():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:, :] = 1.0
    down = geometry.resize(x, (8, 8))
    assert down.min() >= 0 and down.max() <= 1
    plain = torch.nn.functional.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False).clamp(0, 1)
    assert not torch.allclose(down, plain)  # a = -0.5 with antialias, not a = -0.75
    assert torch.equal(geometry.resize(x, (16, 16)), x)


def test_uint8_quantisation_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = geometry.to_uint8_hwc(x)
    assert out.shape == (1, 1, 6, 3) and out.dtype == torch.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]


def test_wavelet_fix_takes_low_frequencies_from_style():
    g = torch.Generator().manual_seed(0)
    content = torch.randn(2, 3, 40, 48, generator=g) * 0.2 + 0.5  # bright, detailed
    style = torch.full((2, 3, 40, 48), -0.3) + torch.linspace(-0.2, 0.2, 48)  # dark smooth ramp
    out = wavelet_color_fix(content, style)
    # Colour (the mean) comes from the style, detail from the content.
    torch.testing.assert_close(out.mean(dim=(-2, -1)), style.mean(dim=(-2, -1)), atol=0.02, rtol=0)
    detail = content - low_frequencies(content)
    torch.testing.assert_close(out - low_frequencies(style), detail, atol=1e-5, rtol=0)


def test_adain_fix_matches_statistics():
    g = torch.Generator().manual_seed(1)
    content, style = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g) * 0.3 + 0.2
    out = adain_color_fix(content, style)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), style.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(-2, -1)), style.std(dim=(-2, -1)), atol=1e-3, rtol=1e-3)


def test_color_fix_dispatch():
    content, style = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    assert torch.equal(color_fix("none", content, style), content)
    assert torch.equal(color_fix("wavelet", content, style), wavelet_color_fix(content, style))
    with pytest.raises(ValueError, match="color_fix must be one of"):
        color_fix("histogram", content, style)
    with pytest.raises(ValueError, match="equal shapes"):
        color_fix("adain", content, style[..., :4])
