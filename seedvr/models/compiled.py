"""Regional `torch.compile`: every DiT block, every VAE resnet block and the VAE's other group norms are
compiled on their own.

Compiling regions rather than whole models keeps compile time to one graph per kind of block (the
blocks of a model share their code) and leaves the host work that varies per window outside: window
layouts, attention plans and rotary tables are built once per window before the first block
(`NaDiT.forward`), and a block does no host synchronisation. Shapes are dynamic, so a new window size
does not recompile every block. The tests compile with `fullgraph=True`, which makes any graph break
inside a block an error; the worker does not, because under `fullgraph` a region past dynamo's recompile
limit (a long-lived worker meeting ever new large frame heights) fails the job, where without it the
region runs eager for that shape (dynamo logs it) and gives the same result within round-off.

In the VAE a resnet block's compiled region is `ResnetBlock.step`, which takes and returns tensors: the
causal cache is a dict keyed by module, and a compiled `forward` reading it would guard on each block's
identity (one graph per block instance and cache state, past the recompile limit for the real VAE).
`forward` stays eager and moves the cached frames in and out. Blocks share graphs by width pair and cache
state (whole clip, first chunk, later chunk): about 10 for whole clips and 15 more for streamed ones.
Frame counts stay dynamic (`FrameGroupNorm` folds frames into the batch when compiled); a block whose
convs run in bands of rows (large inputs) specialises on the height and band count. The group norms
outside resnet blocks (the encoder's and decoder's last norm, the mid-block attention's) are compiled as
modules; those inside are part of their block's graph.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from seedvr.models.nadit import Block
from seedvr.models.vae_layers import FrameGroupNorm, ResnetBlock

log = logging.getLogger(__name__)
# All blocks share one `forward`, whose compiled variants dynamo counts together: the 3B has 5 kinds
# of block (separate/shared weights x window kind, and the last), each with a few shape
# specialisations (one window or several). Past the limit, a region runs eager for new shapes (with
# fullgraph, it fails). The resnet blocks' `step` has its own count: about 25 graphs, and some 15 more
# for each frame height at which convs run in bands.
RECOMPILE_LIMIT = 128


def compile_regions(*models: nn.Module, backend: str = "inductor", fullgraph: bool = False) -> int:
    """Compile, in place, the DiT blocks, VAE resnet blocks and VAE group norms outside them of `models`;
    returns how many regions. `fullgraph`: a graph break or the recompile limit raises (tests)."""
    modules = [m for model in models for m in model.modules()]
    inside = {id(m) for block in modules if isinstance(block, ResnetBlock) for m in block.modules()}
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    options = dict(fullgraph=fullgraph, dynamic=True, backend=backend)
    regions = 0
    for module in modules:
        if isinstance(module, ResnetBlock):
            module.step = torch.compile(module.step, **options)
        elif isinstance(module, Block) or (isinstance(module, FrameGroupNorm) and id(module) not in inside):
            module.compile(**options)
        else:
            continue
        regions += 1
    log.info("torch.compile: %d regions (DiT blocks, VAE resnet blocks and outer group norms), dynamic shapes", regions)
    return regions
