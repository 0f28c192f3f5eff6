"""Regional `torch.compile`: every DiT block and every VAE group norm is compiled on its own.

Compiling regions rather than whole models keeps compile time to one graph per kind of block (the
blocks of a model share their code) and leaves the host work that varies per window outside: window
layouts, attention plans and rotary tables are built once per window before the first block
(`NaDiT.forward`), and a block does no host synchronisation. `fullgraph=True` makes any graph break
inside a block an error rather than a silent slowdown. Shapes are dynamic, so a new window size does
not recompile every block.

In the VAE the compiled regions are the group norms (float32 statistics per frame, the memory-bound
glue around the convolutions, which cuDNN runs anyway), not whole resnet blocks: a resnet block's causal
cache is a dict keyed by module, so dynamo would guard on each block's identity and compile one graph
per block instance (20 graphs for the tiny VAE's 24 blocks), past the recompile limit for the real VAE.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from seedvr.models.nadit import Block
from seedvr.models.vae_layers import FrameGroupNorm

log = logging.getLogger(__name__)
REGIONS = (Block, FrameGroupNorm)
# All blocks share one `forward`, whose compiled variants dynamo counts together: the 3B has 5 kinds
# of block (separate/shared weights x window kind, and the last), each with a few shape
# specialisations (one window or several). Past the default limit of 8, fullgraph would fail.
RECOMPILE_LIMIT = 64


def compile_regions(*models: nn.Module, backend: str = "inductor") -> int:
    """Compile, in place, every DiT block and VAE group norm of `models`; returns how many."""
    regions = [m for model in models for m in model.modules() if isinstance(m, REGIONS)]
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module in regions:
        module.compile(fullgraph=True, dynamic=True, backend=backend)
    log.info("torch.compile: %d regions (DiT blocks, VAE group norms), dynamic shapes", len(regions))
    return len(regions)
