"""The causal video VAE against the official code's fixtures (tests/fixtures/vae, README §4) and manifest."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from seedvr.models.vae import Posterior, VideoVAE, build_vae
from seedvr.models.vae_layers import CausalConv3d

FIXTURES = Path(__file__).parent / "fixtures"
VAE_DIR = FIXTURES / "vae"
CASES = ["video5", "image", "video9_sliced"]
TOL = dict(atol=1e-4, rtol=1e-4)  # README §4: float32 vs float64 of the official code is <= 7e-6


@pytest.fixture(scope="module")
def tiny_config() -> dict:
    return json.loads((VAE_DIR / "config.json").read_text())


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    return load_file(VAE_DIR / "weights.safetensors")


def _tiny_vae(config: dict, weights: dict, dtype: torch.dtype = torch.float32) -> VideoVAE:
    vae = build_vae(config).eval().to(dtype)
    vae.load_state_dict(weights, strict=True)
    return vae


@pytest.fixture(scope="module")
def tiny_vae(tiny_config, tiny_weights) -> VideoVAE:
    return _tiny_vae(tiny_config, tiny_weights)


def _five_d(t: torch.Tensor) -> torch.Tensor:
    """The official wrapper squeezes a single frame away; our API is always 5-D."""
    return t if t.ndim == 5 else t.unsqueeze(2)


@pytest.mark.parametrize("case", CASES)
def test_fixture_case(tiny_vae, case):
    ref = load_file(VAE_DIR / f"case_{case}.safetensors")
    moments = tiny_vae.encode_moments(ref["x"])
    posterior = Posterior.from_moments(moments)
    latent = tiny_vae.encode(ref["x"], ref["posterior_noise"])
    decoded = tiny_vae.decode(latent)
    torch.testing.assert_close(moments, ref["moments"], **TOL)
    torch.testing.assert_close(posterior.mean, ref["posterior_mean"], **TOL)
    torch.testing.assert_close(posterior.logvar, ref["posterior_logvar_clamped"], **TOL)
    torch.testing.assert_close(latent, _five_d(ref["latent"]), **TOL)
    torch.testing.assert_close(decoded, _five_d(ref["decoded"]), **TOL)


def test_default_noise_is_the_official_global_rng_draw(tiny_vae):
    """The end-to-end fixture drew the posterior noise with torch.randn from the CPU RNG seeded 666."""
    ref = load_file(FIXTURES / "e2e_3b_tiny" / "case.safetensors")
    x = ref["lq_cut"].unsqueeze(0)
    torch.manual_seed(666)
    drawn = tiny_vae.encode(x)
    injected = tiny_vae.encode(x, ref["noise_vae_posterior"])
    torch.testing.assert_close(drawn, injected, atol=0, rtol=0)
    cond_latent = (injected * 0.9152)[0].permute(1, 2, 3, 0)
    torch.testing.assert_close(cond_latent, ref["cond_latent"], **TOL)


def test_generator_makes_the_sample_reproducible(tiny_vae):
    x = load_file(VAE_DIR / "case_video5.safetensors")["x"]
    first = tiny_vae.encode(x, generator=torch.Generator().manual_seed(1))
    again = tiny_vae.encode(x, generator=torch.Generator().manual_seed(1))
    other = tiny_vae.encode(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - other).abs().max() > 1e-3


def test_real_config_matches_manifest():
    manifest = json.loads((FIXTURES / "manifests" / "vae.json").read_text())
    with torch.device("meta"):
        vae = build_vae(manifest["constructor_kwargs"])
    state = vae.state_dict()
    assert sorted(state) == sorted(manifest["keys"])
    for key, (shape, _) in manifest["keys"].items():
        assert list(state[key].shape) == shape, key
    assert sum(p.numel() for p in vae.parameters()) == manifest["total_parameters"] == 250_648_227


def test_legacy_attention_names_load(tiny_config, tiny_weights):
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in tiny_weights.items():
        for new, old in legacy_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[key] = value
    assert sum(".query." in k or ".proj_attn." in k for k in legacy) == 8  # 2 blocks × weight, bias × 2
    vae = build_vae(tiny_config)
    vae.load_state_dict(legacy, strict=True)
    with torch.device("meta"):  # how the checkpoint loader fills it
        meta_built = build_vae(tiny_config)
    meta_built.load_state_dict(legacy, strict=True, assign=True)
    for loaded in (vae, meta_built):
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, tiny_weights[key], atol=0, rtol=0)


def _record_chunk_lengths(module: torch.nn.Module) -> list[int]:
    lengths: list[int] = []
    module.register_forward_hook(lambda _m, args, _out: lengths.append(args[0].shape[2]))
    return lengths


@pytest.mark.parametrize(
    ("frames", "encode_chunk", "decode_chunk", "encoder_chunks", "decoder_chunks"),
    [(9, 4, 1, [5, 4], [2, 1]), (13, 4, 1, [5, 4, 4], [2, 1, 1]), (13, 8, 2, [9, 4], [3, 1])],
)
def test_chunked_equals_whole(
    tiny_config, tiny_weights, frames, encode_chunk, decode_chunk, encoder_chunks, decoder_chunks
):
    vae = _tiny_vae(tiny_config, tiny_weights)
    x = torch.rand(1, 3, frames, 16, 24, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, 2, 3, generator=torch.Generator().manual_seed(0))

    vae.set_chunking(None, None)
    whole_moments, whole_video = vae.encode_moments(x), vae.decode(z)

    vae.set_chunking(encode_chunk, decode_chunk)
    seen_by_encoder, seen_by_decoder = _record_chunk_lengths(vae.encoder), _record_chunk_lengths(vae.decoder)
    chunked_moments, chunked_video = vae.encode_moments(x), vae.decode(z)

    assert (seen_by_encoder, seen_by_decoder) == (encoder_chunks, decoder_chunks)
    assert chunked_video.shape == (1, 3, frames, 16, 24)
    torch.testing.assert_close(chunked_moments, whole_moments, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_video, whole_video, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kernel", "stride"), [((3, 3, 3), 1), ((3, 3, 3), (2, 2, 2)), ((1, 1, 1), 1)])
def test_a_clip_of_one_frame_is_its_padded_conv(kernel, stride):
    """A clip that starts with its only frame runs one tap of the time-summed kernel: its output, and the
    frames it hands the next chunk, are those of the frame repeated k_t - 1 times in front (whole clip)."""
    gen = torch.Generator().manual_seed(0)
    conv = CausalConv3d(8, 6, kernel, stride=stride).eval()
    first, more = torch.randn(1, 8, 1, 10, 12, generator=gen), torch.randn(1, 8, 2, 10, 12, generator=gen)
    padded = torch.cat([first] * (kernel[0] - 1) + [first, more], dim=2)
    whole = F.conv3d(padded, conv.weight, conv.bias, conv.stride, conv.padding)
    cache = {}
    with torch.no_grad():
        alone, streamed = conv(first), torch.cat([conv(first, cache), conv(more, cache)], dim=2)
    torch.testing.assert_close(alone, whole[:, :, :1], atol=2e-6, rtol=0)
    torch.testing.assert_close(streamed, whole, atol=2e-6, rtol=0)


def test_an_image_runs_no_temporal_tap(tiny_vae, monkeypatch):
    """Every conv of an image's encode and decode uses the kernel summed over time (a third of the work)."""
    taps = []
    conv3d = F.conv3d
    monkeypatch.setattr(F, "conv3d", lambda x, weight, *a, **k: taps.append(weight.shape[2]) or conv3d(x, weight, *a, **k))
    ref = load_file(VAE_DIR / "case_image.safetensors")
    tiny_vae.decode(tiny_vae.encode(_five_d(ref["x"]), ref["posterior_noise"]))
    assert len(taps) > 20 and set(taps) == {1}


def test_causal_in_time(tiny_config, tiny_weights):
    """Latent j sees frames <= 4j; output frames <= 4j see latents <= j."""
    vae = _tiny_vae(tiny_config, tiny_weights)
    vae.set_chunking(None, None)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 9, 16, 16, generator=gen) * 2 - 1
    x_late = x.clone()
    x_late[:, :, 5:] = torch.rand(1, 3, 4, 16, 16, generator=gen)
    m, m_late = vae.encode_moments(x), vae.encode_moments(x_late)
    torch.testing.assert_close(m[:, :, :2], m_late[:, :, :2], atol=1e-6, rtol=0)
    assert (m[:, :, 2] - m_late[:, :, 2]).abs().max() > 1e-3

    z = torch.randn(1, 16, 3, 2, 2, generator=gen)
    z_late = z.clone()
    z_late[:, :, 2] = torch.randn(1, 16, 2, 2, generator=gen)
    y, y_late = vae.decode(z), vae.decode(z_late)
    torch.testing.assert_close(y[:, :, :5], y_late[:, :, :5], atol=1e-6, rtol=0)
    assert (y[:, :, 5:] - y_late[:, :, 5:]).abs().max() > 1e-3


def test_conv_row_bands_change_nothing(tiny_config, tiny_weights, monkeypatch):
    vae = _tiny_vae(tiny_config, tiny_weights)
    ref = load_file(VAE_DIR / "case_video5.safetensors")
    latent = _five_d(ref["latent"])
    conv_calls = []
    conv3d = torch.nn.functional.conv3d
    monkeypatch.setattr(
        torch.nn.functional, "conv3d", lambda *a, **k: conv_calls.append(1) or conv3d(*a, **k)
    )

    moments, decoded = vae.encode_moments(ref["x"]), vae.decode(latent)
    unbanded_calls = len(conv_calls)
    vae.set_conv_memory_limit(256 * 1024)  # bytes: the full-resolution convs (strided too) split in bands
    banded_moments, banded_decoded = vae.encode_moments(ref["x"]), vae.decode(latent)

    assert len(conv_calls) - unbanded_calls > unbanded_calls + 20  # 121 vs 72 measured
    torch.testing.assert_close(banded_moments, moments, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(banded_decoded, decoded, atol=1e-6, rtol=1e-6)


def _check_bf16(vae: VideoVAE) -> None:
    ref = load_file(VAE_DIR / "case_video9_sliced.safetensors")
    moments = vae.encode_moments(ref["x"])
    decoded = vae.decode(_five_d(ref["latent"]))
    for ours, expected in ((moments, ref["moments"]), (decoded, ref["decoded"])):
        assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
        error = ours.float().cpu() - expected
        assert error.abs().max() <= 0.05 * expected.abs().max()
        assert error.norm() <= 0.04 * expected.norm()


def test_bf16_runs_close_to_float32(tiny_config, tiny_weights):
    """bf16 weights and activations (GroupNorm in float32): ~1.5 % of the output range after ~40 layers was
    measured on these weights; the bounds leave about 3× margin and still catch any real bug."""
    _check_bf16(_tiny_vae(tiny_config, tiny_weights, torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_close_to_float32(tiny_config, tiny_weights):
    _check_bf16(_tiny_vae(tiny_config, tiny_weights, torch.bfloat16).cuda())


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 6, 64, 64), "4n\\+1"),
        ((1, 3, 5, 60, 64), "multiples of 8"),
        ((1, 3, 5, 64, 36), "multiples of 8"),
        ((1, 3, 64, 64), "\\[B,3,T,H,W\\]"),
        ((1, 4, 5, 64, 64), "\\[B,3,T,H,W\\]"),
    ],
)
def test_encode_rejects_bad_input(tiny_vae, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_vae.encode(torch.zeros(shape))


def test_decode_and_noise_reject_bad_shapes(tiny_vae):
    with pytest.raises(ValueError, match="z \\[B,16,T,h,w\\]"):
        tiny_vae.decode(torch.zeros(1, 16, 8, 12))
    with pytest.raises(ValueError, match="noise shape"):
        tiny_vae.encode(torch.zeros(1, 3, 5, 16, 16), torch.zeros(1, 16, 1, 2, 2))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"inflation_mode": "tail"}, "inflation_mode"),
        ({"use_quant_conv": True}, "use_quant_conv"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"mystery_option": 1}, "mystery_option"),
        ({"up_block_types": ["UpDecoderBlock2D"] * 4}, "up_block_types"),
        ({"spatial_downsample_factor": 16}, "spatial_downsample_factor"),
        ({"slicing_sample_min_size": 6}, "multiple of 4"),
    ],
)
def test_build_rejects_unsupported_config(tiny_config, override, message):
    with pytest.raises(ValueError, match=message):
        build_vae({**tiny_config, **override})


def test_build_takes_chunk_size_from_official_slicing(tiny_config):
    vae = build_vae({**tiny_config, "slicing_sample_min_size": 8, "freeze_encoder": True})
    assert (vae.encode_chunk_frames, vae.decode_chunk_latents) == (8, 2)
    with pytest.raises(ValueError, match="decode_chunk_latents"):
        vae.set_chunking(4, 0)
