"""One window split into bands of rows over 2 and 3 ranks (seedvr/bands.py) against one process: the VAE
alone (fixture VAE and an odd 3-level VAE, uneven and empty bands, streaming chunks), whole windows
(preprocess, encode, DiT, decode, colour fix), and the work each rank did (its own rows only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bands_worker  # noqa: E402
from bands_worker import VAE_CASES, WINDOW_CASES, vae_inputs, vaes, window_frames  # noqa: E402
from seedvr import bands, parallel  # noqa: E402
from seedvr.pipeline import RestoreOptions, make_plan  # noqa: E402
from seedvr.pipeline.restore import Stages, preprocess, restore_window  # noqa: E402
from tiny import tiny_models  # noqa: E402

# Measured (fp32, CPU, 2 and 3 ranks): max |difference| / max |one process| <= 1.8e-6 for the VAE bands,
# <= 1.3e-6 for whole windows (the DiT's split adds its own round-off).
RTOL = 3e-6
ONE = parallel.Ranks(group=None, rank=0, size=1, device=torch.device("cpu"))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.abs().max())


@pytest.fixture(scope="module", params=[2, 3], ids=lambda size: f"{size}ranks")
def launched(request, tmp_path_factory) -> list[dict]:
    """Every rank's results for a group of 2 or 3 ranks (one spawn each)."""
    size, out = request.param, tmp_path_factory.mktemp(f"bands{request.param}")
    mp.spawn(bands_worker.main, args=(size, str(out / "store"), str(out)), nprocs=size)
    return [torch.load(out / f"bands{size}_rank{r}.pt") for r in range(size)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    """The untiled one-process results, and the work counts of a group of one."""
    out = {}
    models = vaes()
    for name, (vae_name, *shape) in VAE_CASES.items():
        vae = models[vae_name]
        video, noise, latent = vae_inputs(vae, *shape)
        out[f"{name}/encode"] = vae.encode(video, noise=noise)
        out[f"{name}/decode"] = vae.decode(latent)
        factor = vae.params.spatial_factor
        parallel.WORK.clear()
        grid = bands.Bands.even(ONE, shape[1] // factor, shape[2] // factor)
        bands.encode_band(vae, video, noise, grid)
        bands.decode_band(vae, latent, grid)
        out[f"{name}/work"] = dict(parallel.WORK)
    tiny = tiny_models()
    for name, (frames, height, width, settings) in WINDOW_CASES.items():
        options = RestoreOptions(vae_tile=0, **settings)
        plan = make_plan(height, width, frames, tiny, options)
        out[name] = restore_window(window_frames(frames, height, width), tiny, options, plan, 0, Stages("cpu", 1, frames))
    return out


@pytest.mark.parametrize("case", list(VAE_CASES))
def test_vae_bands_equal_one_process(launched, one_process, case: str) -> None:
    for part in ("encode", "decode"):
        whole = torch.cat([r[f"{case}/{part}"] for r in launched], dim=-2)
        assert relative_error(whole, one_process[f"{case}/{part}"]) < RTOL, part


@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_window_bands_equal_one_process(launched, one_process, case: str) -> None:
    main, *others = launched
    assert main[case].shape == one_process[case].shape
    assert relative_error(main[case], one_process[case]) < RTOL
    assert all(r[case].numel() == 0 for r in others)  # only the main rank receives the frames


@pytest.mark.parametrize("case", list(VAE_CASES))
def test_each_rank_computes_only_its_band(launched, one_process, case: str) -> None:
    """Every conv's output rows are counted: a rank's count is its band's share of the one-process count."""
    _, _, height, _ = VAE_CASES[case]
    rows = height // vaes()[VAE_CASES[case][0]].params.spatial_factor
    spans = bands.split_rows(rows, len(launched))
    for key in ("vae_encode_rows", "vae_decode_rows"):
        total = one_process[f"{case}/work"][key]
        counts = [r[f"{case}/work"].get(key, 0) for r in launched]
        assert counts == [total * (b - a) // rows for a, b in zip(spans, spans[1:])], key


def test_window_work_is_split(launched) -> None:
    """Each rank preprocesses its band's pixel rows and colour-fixes its rows of the output, nothing more."""
    frames, height, width, settings = WINDOW_CASES["video_wavelet"]
    plan = make_plan(height, width, frames, tiny_models(), RestoreOptions(vae_tile=0, **settings))
    top, size_h = plan.pads[2], plan.size[0]
    cuts = [8 * c for c in bands.split_rows(plan.padded_size[0] // 8, len(launched))]
    for (a, b), rank in zip(zip(cuts, cuts[1:]), launched):
        work = rank["video_wavelet/work"]
        assert work["preprocess_rows"] == b - a
        assert work["colorfix_rows"] == min(max(b - top, 0), size_h) - min(max(a - top, 0), size_h)


@pytest.mark.parametrize("size_in,settings", [((37, 53), dict(res_h=64, res_w=90)), ((70, 98), dict(res_h=40, res_w=56)), ((48, 64), dict(res_h=48, res_w=64))])
def test_preprocess_bands_equal_preprocess(size_in: tuple[int, int], settings: dict) -> None:
    frames = window_frames(2, *size_in)
    plan = make_plan(*size_in, 2, tiny_models(), RestoreOptions(vae_tile=0, **settings))
    whole = preprocess(frames, plan, "cpu")
    cuts = [0, 8, 8, 24, plan.padded_size[0]]  # an empty band, and bands in the grid padding
    parts = [bands.preprocess_band(frames, plan, "cpu", span) for span in zip(cuts, cuts[1:])]
    assert relative_error(torch.cat(parts, dim=-2), whole) < 1e-6


def test_band_mode_leaves_the_vae_as_it_was() -> None:
    vae = tiny_models().vae
    grid = bands.Bands.even(ONE, 2, 3)
    with bands.band_mode(vae, grid):
        assert "forward" in vae.encoder.conv_norm_out.__dict__
    assert not any(name in m.__dict__ for m in vae.modules() for name in ("forward", "_conv_in_row_bands"))
