"""Variable-length attention over packed sequences: one kernel call per batch, never a loop per window.

Backends: flash-attn's varlen kernel when it is installed and the tensors are fp16/bf16 on CUDA,
otherwise torch's scaled_dot_product_attention with the sequences grouped by length (windows of equal
size become one batched call, so a 720p frame's few distinct window sizes cost a few calls). The choice
can be forced with SEEDVR_ATTENTION=sdpa|flash and is logged once per backend.

The grouped SDPA is one custom op (`seedvr::grouped_sdpa`): `torch.compile` sees a single opaque call
whatever the number of groups, so a resolution with another count of window sizes does not recompile.
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
    """Sequence boundaries of a packed batch, built once per forward and shared by all blocks.

    The backend is decided here, outside the blocks, so that a compiled block reads a constant.
    """

    cu_seqlens: torch.Tensor  # [n+1] int32
    max_seqlen: int
    group_rows: torch.Tensor  # row indices of the sequences, grouped by length, groups concatenated
    group_shape: torch.Tensor  # [2 * groups] int64 on the CPU: (sequences, length) of each group, flat
    # (flat, so that one group is not a size-1 dimension, which torch.compile would specialise on)
    backend: str  # "flash" or "sdpa"


def make_plan(seq_lens: list[int], device: torch.device, dtype: torch.dtype) -> VarlenPlan:
    """The plan of sequences `seq_lens` for q, k, v of `dtype` on `device`."""
    lens = torch.tensor(seq_lens)
    starts = torch.cumsum(lens, 0) - lens
    lengths = lens.unique()
    rows = [(starts[lens == n][:, None] + torch.arange(n)).flatten() for n in lengths.tolist()]
    shape = torch.stack([(lens[:, None] == lengths).sum(0), lengths], dim=1).flatten()
    cu = F.pad(torch.cumsum(lens, 0), (1, 0)).to(device=device, dtype=torch.int32)
    return VarlenPlan(
        cu_seqlens=cu, max_seqlen=int(lens.max()), group_rows=torch.cat(rows).to(device), group_shape=shape,
        backend=select_backend(device, dtype),
    )


@torch.library.custom_op("seedvr::grouped_sdpa", mutates_args=())
def grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """SDPA per group of equal-length sequences ([L, heads, dim] tensors; `rows`, `shape` of a VarlenPlan).

    `shape` lives on the CPU, so reading it never waits for the GPU.
    """
    out = torch.empty_like(q)
    counts, lengths = shape.view(-1, 2).unbind(1)
    for idx, n in zip(rows.split((counts * lengths).tolist()), lengths.tolist()):
        idx = idx.view(-1, n)
        qg, kg, vg = (x[idx].transpose(1, 2) for x in (q, k, v))  # [windows, heads, length, dim]
        out[idx] = F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2)
    return out


@grouped_sdpa.register_fake
def _grouped_sdpa_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(q)


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


def select_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """'flash' or 'sdpa' for tensors of `dtype` on `device`; a SEEDVR_ATTENTION that cannot run is an error."""
    wanted = os.environ.get("SEEDVR_ATTENTION", "auto")
    cuda = torch.device(device).type == "cuda"
    flash_ok = cuda and dtype in (torch.float16, torch.bfloat16) and _flash_varlen() is not None
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
    if plan.backend == "flash":
        cu, n = plan.cu_seqlens, plan.max_seqlen
        return _flash_varlen()(q, k, v, cu, cu, n, n)
    return grouped_sdpa(q, k, v, plan.group_rows, plan.group_shape)
