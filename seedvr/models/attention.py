"""Variable-length attention over packed sequences: one kernel call per batch, never a loop per window.

Backends: flash-attn's varlen kernel when it is installed and the tensors are fp16/bf16 on CUDA,
otherwise torch's scaled_dot_product_attention with the sequences grouped by length (windows of equal
size become one batched call, so a 720p frame's few distinct window sizes cost a few calls). The choice
can be forced with SEEDVR_ATTENTION=sdpa|flash and is logged once per backend.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class VarlenPlan:
    """Sequence boundaries of a packed batch, built once per forward and shared by all blocks."""

    cu_seqlens: torch.Tensor  # [n+1] int32
    max_seqlen: int
    groups: list[torch.Tensor]  # per distinct length: row indices [windows, length]


def make_plan(seq_lens: list[int], device: torch.device) -> VarlenPlan:
    lens = torch.tensor(seq_lens)
    starts = torch.cumsum(lens, 0) - lens
    groups = [
        (starts[lens == n][:, None] + torch.arange(n)).to(device) for n in lens.unique().tolist()
    ]
    cu = F.pad(torch.cumsum(lens, 0), (1, 0)).to(device=device, dtype=torch.int32)
    return VarlenPlan(cu_seqlens=cu, max_seqlen=int(lens.max()), groups=groups)


@cache
def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@cache
def _announce(backend: str) -> None:
    log.info("attention backend: %s", backend)


def select_backend(q: torch.Tensor) -> str:
    """'flash' or 'sdpa' for these tensors; an explicit SEEDVR_ATTENTION that cannot run is an error."""
    wanted = os.environ.get("SEEDVR_ATTENTION", "auto")
    flash_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_varlen() is not None
    if wanted == "flash" and not flash_ok:
        raise RuntimeError("SEEDVR_ATTENTION=flash needs flash-attn installed and fp16/bf16 CUDA tensors")
    if wanted not in ("auto", "flash", "sdpa"):
        raise ValueError(f"SEEDVR_ATTENTION must be auto, flash or sdpa, got {wanted!r}")
    backend = "flash" if wanted == "flash" or (wanted == "auto" and flash_ok) else "sdpa"
    _announce(backend)
    return backend


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: VarlenPlan) -> torch.Tensor:
    """Exact softmax attention within each packed sequence; q, k, v and the result are [L, heads, dim]."""
    if q.shape[0] == 0:  # an idle sequence-parallel rank (seedvr/parallel.py) holds no sequence
        return torch.empty_like(q)
    if select_backend(q) == "flash":
        cu, n = plan.cu_seqlens, plan.max_seqlen
        return _flash_varlen()(q, k, v, cu, cu, n, n)
    out = torch.empty_like(q)
    for idx in plan.groups:
        qg, kg, vg = (x[idx].transpose(1, 2) for x in (q, k, v))  # [windows, heads, length, dim]
        out[idx] = F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2)
    return out
