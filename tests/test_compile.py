"""Regional torch.compile (seedvr/models/compiled.py): no graph break inside a block, dynamic window
sizes, graphs shared between VAE resnet blocks, and outputs equal to eager, whole and streamed in causal
chunks. Dynamo's tracing is what most of these tests check (backend aot_eager); the small inductor test
also runs the generated C++ (gcc) on one VAE resnet block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from seedvr.models import build_dit
from seedvr.models.compiled import compile_regions
from seedvr.models.vae import VideoVAE, build_vae
from seedvr.models.vae_layers import ResnetBlock

FIXTURES = Path(__file__).parent / "fixtures"


def _one_block_dit() -> torch.nn.Module:
    """The 7B fixture architecture cut to one block: one kind of block, so one graph to trace."""
    cfg = json.loads((FIXTURES / "dit_v1" / "config.json").read_text())
    cfg.update(num_layers=1, block_type="mmdit_sr", window=[4, 3, 3], window_method="720pwin_by_size_bysize")
    torch.manual_seed(0)
    model = build_dit("v1", cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():  # ada tables and gates of zeros would hide the blocks
            param.normal_(0, 0.3 if param.ndim == 1 else param.shape[-1] ** -0.5)
    return model


def _call(model: torch.nn.Module, latent: tuple[int, int, int]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(sum(latent))
    vid = torch.randn(latent[0] * latent[1] * latent[2], 33, generator=gen)
    txt = torch.randn(7, 48, generator=gen)
    with torch.no_grad():
        return model(vid, txt, torch.tensor([latent]), torch.tensor([[7]]), torch.tensor([700.0]))


def test_compiled_dit_block_equals_eager_over_window_sizes() -> None:
    """Window layouts of other sizes and window counts reuse a dynamic graph, with no break.

    Not always exactly one graph: dynamo assumes that dimensions of equal size are one symbol (duck
    sizing) and recompiles once when a later layout tells them apart.
    """
    model = _one_block_dit()
    shapes = [(3, 12, 16), (5, 10, 22), (2, 14, 30)]
    eager = [_call(model, s) for s in shapes]
    counters.clear()
    assert compile_regions(model, backend="aot_eager", fullgraph=True) == 1
    for shape, expected in zip(shapes, eager):
        torch.testing.assert_close(_call(model, shape), expected, atol=1e-6, rtol=1e-6)
    assert counters["stats"]["unique_graphs"] < len(shapes)
    assert not counters["graph_break"]


def _tiny_vae(**changes: object) -> VideoVAE:
    """A fresh fixture VAE (compiling changes it in place); with `changes`, random weights."""
    cfg = json.loads((FIXTURES / "vae" / "config.json").read_text()) | changes
    torch.manual_seed(0)
    vae = build_vae(cfg).eval()
    if not changes:
        vae.load_state_dict(load_file(FIXTURES / "vae" / "weights.safetensors"))
    return vae


def _encode_decode(vae: VideoVAE, chunking: tuple[int | None, int | None]) -> list[torch.Tensor]:
    """Moments of a 9-frame clip and the decoded 3-latent clip, whole (None) or in causal chunks."""
    gen = torch.Generator().manual_seed(1)
    vae.set_chunking(*chunking)
    return [vae.encode_moments(torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1),
            vae.decode(torch.randn(1, 16, 3, 4, 6, generator=gen))]


@pytest.mark.slow  # traces about 25 graphs: a minute on 2 loaded cores
def test_compiled_vae_equals_eager_whole_and_streamed() -> None:
    """Encode and decode, compiled, whole and in chunks (4 frames, 1 latent) carrying the causal cache with
    the full-resolution convs in bands of rows (so the band bounds are traced too), against eager whole
    clips: a wrong cache, which eager streaming would share, shows too."""
    vae = _tiny_vae()
    expected = _encode_decode(vae, (None, None))
    torch._dynamo.reset()  # no graphs of earlier tests
    counters.clear()
    assert compile_regions(vae, backend="aot_eager", fullgraph=True) == 24 + 4  # resnet blocks; norm_out and attention norms
    whole = _encode_decode(vae, (None, None))
    vae.set_conv_memory_limit(128 * 1024)
    for compiled, eager in zip(whole + _encode_decode(vae, (4, 1)), expected * 2):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert not counters["graph_break"]


@pytest.mark.slow  # traces about 20 graphs
def test_compiled_resnet_blocks_share_graphs() -> None:
    """Graphs depend on a block's widths and cache state, not on the block: a VAE with 56 resnet blocks,
    streamed, needs less than half as many graphs (20). Compiling `ResnetBlock.forward`, which reads the
    module-keyed cache, takes one graph per block and cache state, and fails this."""
    vae = _tiny_vae(layers_per_block=6)
    blocks = sum(isinstance(m, ResnetBlock) for m in vae.modules())
    eager = _encode_decode(vae, (4, 1))
    torch._dynamo.reset()
    counters.clear()
    compile_regions(vae, backend="aot_eager", fullgraph=True)
    for compiled, expected in zip(_encode_decode(vae, (4, 1)), eager):
        torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=1e-5)
    assert blocks == 56 and counters["stats"]["unique_graphs"] < blocks / 2
    assert not counters["graph_break"]


@pytest.mark.slow  # inductor generates and compiles C++: about a minute on 2 loaded cores
def test_inductor_resnet_block_equals_eager_when_streaming() -> None:
    """A resnet block (with its 1x1x1 shortcut) compiled by inductor, run in causal chunks, equals eager."""
    torch.manual_seed(0)
    block = ResnetBlock(8, 16, 4).eval()
    x = torch.randn(1, 8, 9, 6, 10)
    with torch.no_grad():
        eager = block(x)
        assert compile_regions(block, fullgraph=True) == 1
        cache: dict = {}
        compiled = torch.cat([block(x[:, :, :5], cache), block(x[:, :, 5:], cache)], 2)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
