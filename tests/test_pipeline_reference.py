"""Reference mode against the official pipeline's tensors (tests/fixtures/e2e_3b_tiny)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seedvr.pipeline import geometry, restore_reference, sampling
from seedvr.pipeline.reference import encode_condition, preprocess_reference
from seedvr.pipeline.temporal import pad_to_4n1
from tiny import tiny_models

E2E = Path(__file__).parent / "fixtures" / "e2e_3b_tiny"
ATOL = 1e-5  # measured: 5.0e-6 on the output, 1.3e-6 on the DiT output, 9.5e-7 on the latents


@pytest.fixture(scope="module")
def case() -> dict[str, torch.Tensor]:
    return load_file(E2E / "case.safetensors")


@pytest.fixture(scope="module")
def settings() -> dict:
    return json.loads((E2E / "settings.json").read_text())


@pytest.fixture(scope="module")
def models():
    return tiny_models("3b")


class RecordingDiT(torch.nn.Module):
    """Wraps the DiT to keep its inputs and output."""

    def __init__(self, dit: torch.nn.Module):
        super().__init__()
        self.dit, self.calls = dit, []

    def forward(self, vid, txt, vid_shape, txt_shape, timestep):
        out = self.dit(vid, txt, vid_shape, txt_shape, timestep)
        self.calls.append(dict(vid=vid, txt=txt, vid_shape=vid_shape, txt_shape=txt_shape, timestep=timestep, out=out))
        return out


def _noises(case: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"vae": case["noise_vae_posterior"], "dit": case["noise_dit"], "cond_aug": case["noise_cond_aug"]}


def test_preprocess_matches_official_transform(case, settings):
    video = preprocess_reference(case["lq_frames_u8"], settings["res_h"], settings["res_w"])
    torch.testing.assert_close(video, case["lq_transformed"], atol=ATOL, rtol=0)
    torch.testing.assert_close(pad_to_4n1(video, dim=1), case["lq_cut"], atol=ATOL, rtol=0)


def test_condition_latent_matches(case, models):
    cond = encode_condition(models.vae, case["lq_cut"], case["noise_vae_posterior"], models.scaling_factor)
    torch.testing.assert_close(cond, case["cond_latent"], atol=ATOL, rtol=0)


def test_restore_reference_matches_official(case, settings, models):
    dit = RecordingDiT(models.dit)
    out = restore_reference(
        case["lq_frames_u8"], dit, models.vae, case["text_pos_emb"], settings["res_h"], settings["res_w"], _noises(case)
    )
    (call,) = dit.calls
    torch.testing.assert_close(call["vid"], case["dit_vid"], atol=ATOL, rtol=0)
    torch.testing.assert_close(call["txt"], case["dit_txt"])
    assert call["vid_shape"].tolist() == case["dit_vid_shape"].tolist()
    assert call["txt_shape"].tolist() == case["dit_txt_shape"].tolist()
    assert call["timestep"].tolist() == case["dit_timestep"].tolist() == [1000.0]
    torch.testing.assert_close(call["out"], case["dit_out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out, case["sample_float"], atol=ATOL, rtol=0)

    frames = geometry.to_uint8_hwc(out)
    diff = (frames.int() - case["out_frames_u8"].int()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() < 1e-3


@pytest.mark.parametrize("frames, size", [(1, (20, 36)), (3, (24, 40)), (6, (30, 18))])
def test_restore_reference_other_shapes(models, frames, size):
    """Not 4n+1 frames and other sizes: padded to 4n+1 inside, truncated back; crop to /16."""
    g = torch.Generator().manual_seed(0)
    lq = torch.randint(0, 256, (frames, 3, *size), dtype=torch.uint8, generator=g)
    res_h, res_w = 32, 48
    h, w = geometry.area_size(*size, res_h, res_w)
    h, w = h - h % 16, w - w % 16
    t_lat = (pad_to_4n1(torch.zeros(frames)).shape[0] - 1) // 4 + 1
    latent = (t_lat, h // 8, w // 8, 16)
    noises = {
        "vae": torch.randn(1, 16, *latent[:3], generator=g),
        "dit": torch.randn(latent, generator=g),
        "cond_aug": torch.randn(latent, generator=g),
    }
    out = restore_reference(lq, models.dit, models.vae, models.text_emb, res_h, res_w, noises)
    assert out.shape == (frames, 3, h, w)
    assert torch.isfinite(out).all()
    # The augmentation noise is weighted 0 (official cond_noise_scale): it must not change anything.
    noises["cond_aug"] = noises["cond_aug"] * 100
    again = restore_reference(lq, models.dit, models.vae, models.text_emb, res_h, res_w, noises)
    torch.testing.assert_close(again, out, atol=0, rtol=0)


def test_x_t_stays_fp32_between_steps():
    """Official: x_t is not rounded to the model dtype between steps (the DiT rounds its own input)."""
    noise = torch.randn(2, 3, 4, 16).to(torch.bfloat16)
    cond, text, seen = torch.randn(2, 3, 4, 17).to(torch.bfloat16), torch.randn(5, 8), []

    def dit(vid, txt, vid_shape, txt_shape, t):
        seen.append(vid[:, :16].clone())
        return (vid[:, :16].float() * 0.3 + 0.1).to(torch.bfloat16)

    x_0 = sampling.sample(dit, noise, cond, text, steps=2)
    v = (noise.float() * 0.3 + 0.1).to(torch.bfloat16).reshape(seen[0].shape)
    x_0_first, x_T_first = sampling.endpoints_from_v(v, noise.reshape(seen[0].shape), torch.tensor([1000.0]))
    expected = sampling.lerp(x_0_first, x_T_first, torch.tensor(500.0))
    assert seen[1].dtype == torch.float32 and x_0.dtype == torch.float32
    torch.testing.assert_close(seen[1], expected, atol=0, rtol=0)


def test_sampling_timesteps_and_one_step_endpoint():
    assert sampling.sampling_timesteps(1).tolist() == [1000.0]
    assert sampling.sampling_timesteps(4).tolist() == [1000.0, 750.0, 500.0, 250.0]
    x_t, v = torch.randn(5, 4), torch.randn(5, 4)
    x_0, x_T = sampling.endpoints_from_v(v, x_t, torch.tensor([1000.0]))
    torch.testing.assert_close(x_0, x_t - v, atol=0, rtol=0)
    torch.testing.assert_close(x_T, x_t, atol=0, rtol=0)
