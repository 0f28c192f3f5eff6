"""Regional torch.compile (seedvr/models/compiled.py): no graph break inside a block, dynamic window
sizes, and outputs equal to eager. Dynamo's tracing is what these tests check; the small inductor test
also runs the generated C++ (gcc) on the group norms of one VAE resnet block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from seedvr.models import build_dit
from seedvr.models.compiled import compile_regions
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
    assert compile_regions(model, backend="aot_eager") == 1
    for shape, expected in zip(shapes, eager):
        torch.testing.assert_close(_call(model, shape), expected, atol=1e-6, rtol=1e-6)
    assert counters["stats"]["unique_graphs"] < len(shapes)
    assert not counters["graph_break"]


@pytest.mark.slow  # inductor generates and compiles C++: about a minute on 2 loaded cores
def test_inductor_vae_norms_equal_eager_when_streaming() -> None:
    """A resnet block whose group norms are compiled by inductor, run in causal chunks, equals eager."""
    torch.manual_seed(0)
    block = ResnetBlock(8, 16, 4).eval()
    x = torch.randn(1, 8, 9, 6, 10)
    with torch.no_grad():
        eager = block(x)
        assert compile_regions(block) == 2
        cache: dict = {}
        compiled = torch.cat([block(x[:, :, :5], cache), block(x[:, :, 5:], cache)], 2)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
