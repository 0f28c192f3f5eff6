"""Sequence parallelism: temporal windows dealt whole to ranks, the NaDiT split by attention windows
or by rows.

A video's temporal windows go to the ranks in rounds, one window per rank restored alone
(`windows_over_ranks`); a window that all ranks restore together (an image, the last windows) has its
VAE split into bands of rows (seedvr/bands.py) and its DiT forward split as follows.

Only attention mixes tokens, and only inside a window (plus the sample's text); norms, modulation,
projections and MLPs are per token. So each rank owns the video tokens of a contiguous run of whole
windows of the current layout and runs the blocks on them unchanged. The regular (even blocks) and
shifted (odd blocks) layouts cut the tokens differently: before a block whose layout differs from the
previous one, the tokens that change owner move in one `all_to_all` of hidden states. Text is small
and replicated: every rank sums the text outputs of the windows it holds, an `all_reduce` of that
[Lt, C] sum gives every rank the same average over all windows, and the text stream then runs
identically everywhere. A rank with no windows (fewer windows than ranks) idles but joins the
collectives. docs/parallel.md compares this with the official Ulysses scheme.

When whole windows cannot be shared out evenly (an image of one window, two windows on three ranks),
each rank instead holds a contiguous run of the video rows (`RowContext`): attention gathers the
projected q, k and v and runs whole on every rank. `cheaper_split` picks whichever leaves the busiest
rank fewer FLOPs.

Launch with torchrun; `init_from_env()` joins the job, `run_dit(model, ...)` replaces `model(...)`.
Every rank must pass identical inputs and gets the full output. `restore_file(..., ranks)` runs the
whole file pipeline on every rank of a group (the CLI under torchrun, the worker's rank processes).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: its functions take `group.WORLD` as a default
# argument, bound at import. torch imports it lazily (with torch._dynamo, when a model is built), so
# imported after `init_process_group` it would hold the group until interpreter exit, where gloo's
# threads drop their last tensors without the GIL and abort the rank now and then (SIGABRT at exit).
import torch.distributed.nn.functional  # noqa: F401

from seedvr import media, pipeline
from seedvr.pipeline.restore import Plan, Stages, WindowJob, WindowTask
from seedvr.models.attention import VarlenPlan, make_plan
from seedvr.models.layers import unpatchify
from seedvr.models.nadit import BlockContext, ForwardContext, NaDiT
from seedvr.models.windows import WindowLayout, run_starts

log = logging.getLogger(__name__)

Item = TypeVar("Item")
LayoutKey = tuple[tuple[int, int, int], str]  # (window, window_method) of a block


@dataclass(frozen=True)
class Ranks:
    """This process's place in the sequence-parallel group."""

    group: dist.ProcessGroup | None
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main rank writes outputs and answers jobs."""
        return self.rank == 0

    def alone(self) -> Ranks:
        """This process as a group of one (work it does without the others)."""
        return Ranks(group=None, rank=0, size=1, device=self.device)


# This process's work in the current `restore_file` (reset at its start): tests count each rank's share.
WORK: Counter[str] = Counter()


def count_work(key: str, n: int = 1) -> None:
    """Add `n` to this process's count of `key` (e.g. "windows", "dit_token_blocks")."""
    WORK[key] += n


def init_from_env(device_type: str | None = None) -> Ranks:
    """Join the torchrun job described by RANK / WORLD_SIZE / LOCAL_RANK (nccl on CUDA, else gloo).

    Without those variables (a plain `python` start) this is a group of one with no process group.
    `device_type` "cpu" keeps a CUDA machine's ranks on the CPU (gloo); None takes CUDA when present.
    """
    cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Ranks(group=None, rank=0, size=1, device=torch.device("cuda" if cuda else "cpu"))
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    ranks = Ranks(group=dist.group.WORLD, rank=dist.get_rank(), size=dist.get_world_size(), device=device)
    log.info("sequence parallel: rank %d of %d, backend %s, device %s", ranks.rank, ranks.size, backend, device)
    return ranks


def assign_windows(sizes: Sequence[int], ranks: int) -> list[int]:
    """Split windows (in layout order) into `ranks` contiguous runs of about equal token count.

    A window goes to the rank whose share of the tokens holds the window's middle token, so every
    rank is within half a window of the mean on each side; contiguous runs keep neighbouring
    windows together, which keeps the regular <-> shifted exchange small. Returns bounds: rank r
    holds windows [bounds[r], bounds[r + 1]). Deterministic, so every rank computes the same split.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    size = torch.tensor(list(sizes), dtype=torch.int64)
    middle2 = 2 * torch.cumsum(size, 0) - size  # twice the middle token's position
    owner = (middle2 * ranks // (2 * int(size.sum()))).clamp(max=ranks - 1)
    return torch.searchsorted(owner, torch.arange(ranks + 1)).tolist()


@dataclass
class Shard:
    """One window layout split across ranks, and this rank's part of it as a layout of its own.

    The rank's video rows are `order[rows[rank]:rows[rank + 1]]` of the full layout (global packed
    token ids, in window order); its hidden states are kept in exactly that order.
    """

    rows: list[int]  # per rank, bounds into the full layout's windowed rows
    owner: torch.Tensor  # [Lv] rank holding each packed video token
    position: torch.Tensor  # [Lv] the token's row on that rank
    tokens: torch.Tensor  # [n] this rank's tokens
    samples: torch.Tensor  # [n] sample index of each of this rank's tokens
    layout: WindowLayout  # this rank's windows only, over its n rows
    plan: VarlenPlan
    angles: dict
    window_total: list[int]  # windows per sample over all ranks: the text average's divisor


def _empty_plan(device: torch.device) -> VarlenPlan:
    return VarlenPlan(
        cu_seqlens=torch.zeros(1, dtype=torch.int32, device=device), max_seqlen=0,
        group_rows=torch.zeros(0, dtype=torch.int64, device=device), group_shape=torch.zeros(0, dtype=torch.int64),
        backend="none",
    )


def make_shard(ctx: ForwardContext, key: LayoutKey, rank: int, size: int) -> Shard:
    """Split the layout `key` of this forward over `size` ranks and cut out rank `rank`'s part."""
    full, _, angles = ctx.layout(*key)
    device = full.order.device
    sizes = full.video_sizes(ctx.txt_lens)
    bounds = assign_windows(sizes.tolist(), size)
    rows = [run_starts(sizes)[b] for b in bounds]
    owner = torch.empty_like(full.order)
    position = torch.empty_like(full.order)
    for r in range(size):
        owner[full.order[rows[r] : rows[r + 1]]] = r
        position[full.order[rows[r] : rows[r + 1]]] = torch.arange(rows[r + 1] - rows[r], device=device)
    v0, v1 = rows[rank], rows[rank + 1]
    layout = full.part(bounds[rank], bounds[rank + 1], ctx.txt_lens)
    samples = torch.repeat_interleave(torch.arange(len(ctx.txt_lens), device=device), torch.tensor(ctx.vid_lens, device=device))
    return Shard(
        rows=rows, owner=owner, position=position, tokens=full.order[v0:v1], samples=samples[full.order[v0:v1]],
        layout=layout, plan=make_plan(layout.seq_lens, device, ctx.emb.dtype) if layout.seq_lens else _empty_plan(device),
        angles={name: a[v0:v1] if name == "vid" else a for name, a in angles.items()},
        window_total=full.window_count,
    )


@dataclass
class Exchange:
    """How this rank's rows move when the layout changes from one shard to the next."""

    send_index: torch.Tensor  # local rows in send order: grouped by destination, each group in its order there
    send_counts: list[int]
    recv_counts: list[int]
    recv_position: torch.Tensor  # the new local row of each received row
    moves: bool  # False when no token changes rank anywhere (then no collective is needed)


def make_exchange(src: Shard, dst: Shard, size: int) -> Exchange:
    """Sends ordered by (destination, row there); receives arrive ordered by (origin, row here)."""
    total = src.owner.numel()
    dest = dst.owner[src.tokens]
    send_index = torch.argsort(dest * total + dst.position[src.tokens])
    origin = src.owner[dst.tokens]
    recv_position = torch.argsort(origin * total + torch.arange(dst.tokens.numel(), device=origin.device))
    return Exchange(
        send_index=send_index,
        send_counts=torch.bincount(dest, minlength=size).tolist(),
        recv_counts=torch.bincount(origin, minlength=size).tolist(),
        recv_position=recv_position,
        moves=bool((src.owner != dst.owner).any()),
    )


class ShardedContext(BlockContext):
    """The blocks' context for this rank's share: its layouts, rows and the text reduction over ranks."""

    def __init__(self, base: ForwardContext, ranks: Ranks):
        self.base = base
        self.ranks = ranks
        self.txt_lens = base.txt_lens
        self.shards: dict[LayoutKey, Shard] = {}
        self.exchanges: dict[tuple[LayoutKey, LayoutKey], Exchange] = {}
        self.key: LayoutKey | None = None

    @property
    def shard(self) -> Shard:
        return self.shards[self.key]

    def enter(self, key: LayoutKey, x: torch.Tensor | None) -> torch.Tensor | None:
        """Make `key` the current layout, moving this rank's hidden states `x` [n, C] to its rows."""
        if key not in self.shards:
            self.shards[key] = make_shard(self.base, key, self.ranks.rank, self.ranks.size)
        previous, self.key = self.key, key
        if x is None or previous == key:
            return x
        if (previous, key) not in self.exchanges:
            self.exchanges[previous, key] = make_exchange(self.shards[previous], self.shards[key], self.ranks.size)
        return self._move(x, self.exchanges[previous, key])

    def _move(self, x: torch.Tensor, ex: Exchange) -> torch.Tensor:
        sent = x[ex.send_index]
        if ex.moves:
            received = sent.new_empty((sum(ex.recv_counts), x.shape[1]))
            dist.all_to_all_single(received, sent, ex.recv_counts, ex.send_counts, group=self.ranks.group)
        else:
            received = sent
        out = torch.empty_like(received)
        out[ex.recv_position] = received
        return out

    def layout(self, window: tuple[int, int, int], method: str) -> tuple[WindowLayout, VarlenPlan, dict]:
        if (window, method) != self.key:
            raise RuntimeError(f"block asked for layout {(window, method)} while the rows are in {self.key}")
        return self.shard.layout, self.shard.plan, self.shard.angles

    def emb_slot(self, layer: int, stream: str) -> torch.Tensor:
        if stream == "txt" or self.base.emb.shape[0] == 1:
            return self.base.emb_slot(layer, stream)
        return self.base.emb.unflatten(-1, (-1, 2, 3))[:, :, layer][self.shard.samples]

    def text_mean(self, txt_out: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """Sum this rank's windows per text token in float32, all-reduce, divide by all windows."""
        width = txt_out.shape[-1]
        parts = txt_out.float().split([n * length for n, length in zip(layout.window_count, self.txt_lens)])
        total = torch.cat([p.view(n, length, width).sum(0) for p, n, length in zip(parts, layout.window_count, self.txt_lens)])
        dist.all_reduce(total, group=self.ranks.group)
        count = torch.tensor(self.shard.window_total, device=total.device).repeat_interleave(torch.tensor(self.txt_lens, device=total.device))
        return (total / count[:, None]).to(txt_out.dtype)

    def own_patches(self, patches: torch.Tensor, key: LayoutKey) -> torch.Tensor:
        """This rank's rows of the patches [Lv, C], for the first block's layout `key`."""
        self.enter(key, None)
        return patches[self.shard.tokens]

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """Every rank's rows [n_r, C] of the current layout -> all rows [Lv, C] in packed order."""
        order = self.base.layout(*self.key)[0].order
        out = y.new_empty((order.numel(), y.shape[1]))
        out[order] = _all_rows(y, self.shard.rows, self.ranks)
        return out


def _all_rows(y: torch.Tensor, bounds: Sequence[int], ranks: Ranks) -> torch.Tensor:
    """Every rank's rows [n_r, C] concatenated in rank order (rank r holds rows bounds[r]:bounds[r + 1])."""
    return gather_uneven(y, [b - a for a, b in zip(bounds, bounds[1:])], 0, ranks)


def gather_uneven(x: torch.Tensor, counts: Sequence[int], dim: int, ranks: Ranks, everywhere: bool = True) -> torch.Tensor:
    """Concatenation along `dim` of every rank's `x` (rank r has `counts[r]` entries there), on every rank,
    or with `everywhere=False` on the main rank only (an empty tensor elsewhere); padded to the largest
    count for the collective. A group without a process group returns `x`."""
    if ranks.group is None:
        return x
    shape = list(x.shape)
    shape[dim] = max(counts)
    padded = x.new_zeros(shape)
    padded.narrow(dim, 0, x.shape[dim]).copy_(x)
    pieces = [torch.empty_like(padded) for _ in counts]
    if everywhere:
        dist.all_gather(pieces, padded, group=ranks.group)
    else:
        main = dist.get_global_rank(ranks.group, 0)
        dist.gather(padded, pieces if ranks.is_main else None, dst=main, group=ranks.group)
        if not ranks.is_main:
            return x.new_empty(0)
    return torch.cat([piece.narrow(dim, 0, n) for piece, n in zip(pieces, counts)], dim)


class RowContext(BlockContext):
    """The blocks' context for a rank that holds a contiguous run of the packed video rows, whatever the
    windows: for layouts of few or unequal windows (an image is often one window), which whole windows
    cannot share out evenly.

    Norms, modulation, projections and MLPs run on the rank's rows alone. Attention gathers every
    rank's projected q, k and v and runs whole, the same on every rank, which then keeps its own rows:
    the attention core (small when windows are few) and the text stream are replicated, the rest split.
    """

    def __init__(self, base: ForwardContext, ranks: Ranks):
        self.base = base
        self.ranks = ranks
        self.txt_lens = base.txt_lens
        total = sum(base.vid_lens)
        self.bounds = [r * total // ranks.size for r in range(ranks.size + 1)]
        self.rows = slice(self.bounds[ranks.rank], self.bounds[ranks.rank + 1])

    def own_patches(self, patches: torch.Tensor, key: LayoutKey) -> torch.Tensor:
        return patches[self.rows]

    def enter(self, key: LayoutKey, x: torch.Tensor) -> torch.Tensor:
        return x  # the rows do not depend on the layout

    def layout(self, window: tuple[int, int, int], method: str) -> tuple[WindowLayout, VarlenPlan, dict]:
        return self.base.layout(window, method)

    def emb_slot(self, layer: int, stream: str) -> torch.Tensor:
        slot = self.base.emb_slot(layer, stream)
        return slot if stream == "txt" or slot.shape[0] == 1 else slot[self.rows]

    def text_mean(self, txt_out: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        return self.base.text_mean(txt_out, layout)

    def windowed(self, project: torch.nn.Module, vid: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        return self.gather(project(vid))[layout.order]

    def own_rows(self, vid_out: torch.Tensor) -> torch.Tensor:
        return vid_out[self.rows]

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """Every rank's rows [n_r, C] -> all rows [Lv, C] in packed order."""
        return _all_rows(y, self.bounds, self.ranks)


def _layout_key(block: torch.nn.Module) -> LayoutKey:
    return (block.attn.window, block.attn.method)


def cheaper_split(model: NaDiT, ctx: ForwardContext, size: int) -> str:
    """"windows" or "rows": the split whose busiest rank does fewer FLOPs in the blocks.

    Per block, a video token costs its projections and MLP (2 x their weights) and a window of n video
    tokens plus its text t costs 4 (n + t)^2 x inner in attention. Whole windows are dealt as
    `assign_windows` deals them; rows split the per-token work evenly but every rank runs all of the
    attention. The text stream is replicated either way. Every rank computes the same choice.
    """
    inner = model.params.heads * model.params.head_dim
    by_windows = by_rows = 0.0
    for block in model.blocks:
        linears = (block.attn.proj_qkv.get("vid"), block.attn.proj_out.get("vid"), block.mlp.get("vid"))
        per_token = 2 * sum(m.weight.numel() for part in linears for m in part.modules() if isinstance(m, torch.nn.Linear))
        layout = ctx.layout(*_layout_key(block))[0]
        sizes = layout.video_sizes(ctx.txt_lens)
        text = torch.tensor(ctx.txt_lens).repeat_interleave(torch.tensor(layout.window_count))
        cost = per_token * sizes.double() + 4 * inner * (sizes + text).double() ** 2
        bounds = assign_windows(sizes.tolist(), size)
        by_windows += max(float(cost[a:b].sum()) for a, b in zip(bounds, bounds[1:]))
        by_rows += per_token * math.ceil(int(sizes.sum()) / size) + float((cost - per_token * sizes).sum())
    return "windows" if by_windows <= by_rows else "rows"


def run_dit(
    model: NaDiT,
    vid: torch.Tensor,
    txt: torch.Tensor,
    vid_shape: torch.Tensor,
    txt_shape: torch.Tensor,
    timestep: torch.Tensor | float,
    ranks: Ranks,
    split: str | None = None,
) -> torch.Tensor:
    """`model(vid, txt, vid_shape, txt_shape, timestep)` with the blocks' tokens split over `ranks`.

    Every rank must call it with identical inputs (same noise, same text) and returns the full
    output. A group of one without a process group runs the model as is. `split` is "windows"
    (`ShardedContext`) or "rows" (`RowContext`); None takes the one `cheaper_split` picks.
    """
    if ranks.group is None:
        if ranks.size != 1:
            raise ValueError(f"ranks.size is {ranks.size} but there is no process group")
        tokens = int(vid_shape.prod(-1).sum()) // model.params.patch**2
        count_work("dit_token_blocks", tokens * len(model.blocks))
        return model(vid, txt, vid_shape, txt_shape, timestep)
    patches, t, base, shapes = model.prepare(vid, txt, vid_shape, txt_shape, timestep)
    split = split or cheaper_split(model, base, ranks.size)
    log.debug("DiT forward split by %s over %d ranks (this is rank %d)", split, ranks.size, ranks.rank)
    ctx = ShardedContext(base, ranks) if split == "windows" else RowContext(base, ranks)
    x = model.vid_in(ctx.own_patches(patches, _layout_key(model.blocks[0])))
    for block in model.blocks:
        x = ctx.enter(_layout_key(block), x)
        count_work("dit_token_blocks", x.shape[0])
        x, t = block(x, t, ctx)
    return unpatchify(ctx.gather(model.project_out(x, ctx)), shapes, model.params.patch)


def split_work(
    fn: Callable[[Item], torch.Tensor], items: Sequence[Item], ranks: Ranks, everywhere: bool = False
) -> list[torch.Tensor] | None:
    """`[fn(item) for item in items]` with the items dealt to ranks in contiguous runs.

    For work that splits into independent pieces (the VAE's spatial tiles, the pipeline's temporal
    windows). The results come back in item order on the main rank (None elsewhere), or on every
    rank with `everywhere` (e.g. latents that all ranks feed to `run_dit`). Shapes may differ per item.
    """
    if ranks.group is None:
        return [fn(item) for item in items]
    bounds = assign_windows([1] * len(items), ranks.size) if items else [0] * (ranks.size + 1)
    start, stop = bounds[ranks.rank], bounds[ranks.rank + 1]
    mine = {i: fn(items[i]).contiguous() for i in range(start, stop)}
    count_work("pieces", len(mine))
    meta = [None] * ranks.size
    dist.all_gather_object(meta, {i: (tuple(y.shape), y.dtype) for i, y in mine.items()}, group=ranks.group)
    owners = {i: r for r, m in enumerate(meta) for i in m}
    shapes = {i: m[i] for m in meta for i in m}
    results = []
    for i in range(len(items)):
        owner = owners[i]
        if owner == ranks.rank:
            y = mine[i]
        elif everywhere or ranks.is_main:
            y = torch.empty(shapes[i][0], dtype=shapes[i][1], device=ranks.device)
        else:
            continue
        if everywhere:
            dist.broadcast(y, src=dist.get_global_rank(ranks.group, owner), group=ranks.group)
        elif owner != 0:
            peer = dist.get_global_rank(ranks.group, 0 if ranks.rank == owner else owner)
            (dist.send if ranks.rank == owner else dist.recv)(y, peer, group=ranks.group)
        results.append(y)
    return results if everywhere or ranks.is_main else None


# ---------------------------------------------------------------------------------- the file pipeline


def broadcast_object(obj: Any, ranks: Ranks) -> Any:
    """The main rank's `obj` on every rank (what the others pass is ignored); picklable objects only."""
    if ranks.group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(ranks.group, 0), group=ranks.group)
    return box[0]


def _dit_from_main(
    model: NaDiT, vid: torch.Tensor, txt: torch.Tensor, vid_shape: torch.Tensor, txt_shape: torch.Tensor,
    timestep: torch.Tensor | float, ranks: Ranks,
) -> torch.Tensor:
    """`run_dit` on the main rank's video tokens: ranks that encoded the same frames on other GPUs may
    differ in the last bits (kernel choice), and the sharded forward needs one input."""
    vid = vid.contiguous()
    dist.broadcast(vid, src=dist.get_global_rank(ranks.group, 0), group=ranks.group)
    return run_dit(model, vid, txt, vid_shape, txt_shape, timestep, ranks)


def sharded_dit(model: NaDiT, ranks: Ranks) -> Callable[..., torch.Tensor]:
    """The DiT callable the pipeline's sampler calls, split over `ranks` (the model itself for one rank)."""
    return model if ranks.group is None else partial(_dit_from_main, model, ranks=ranks)


def _agreed_options(
    src: Path, models: pipeline.RestorationModels, options: pipeline.RestoreOptions
) -> pipeline.RestoreOptions:
    """`options` with the automatic window, overlap and tile made explicit, as this rank would plan them.

    The automatic choices read the free GPU memory, which differs between GPUs; every rank must cut the
    clip the same way, so they all take the main rank's choice.
    """
    info = media.probe(src)
    frames = 1 if info.kind == "image" else info.frames
    plan = pipeline.make_plan(info.height, info.width, frames, models, options)
    temporal = {} if frames == 1 else {"batch_frames": plan.window, "overlap_frames": plan.overlap}
    return dataclasses.replace(options, vae_tile=plan.tiling.tile if plan.tiling else 0, **temporal)


def _from_main(fn: Callable[[], Any], ranks: Ranks) -> Any:
    """`fn()` on the main rank, its result (or its exception, raised) on every rank: a failure on the
    main rank must not leave the others waiting in a collective."""
    value: Any = None
    if ranks.is_main:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank just below
            value = exc
    value = broadcast_object(value, ranks)
    if isinstance(value, Exception):
        raise value
    return value


GroupWindow = Callable[
    [np.ndarray, pipeline.RestorationModels, pipeline.RestoreOptions, Plan, int, Stages, Ranks], torch.Tensor
]


class RankError(RuntimeError):
    """Another rank of the group failed; raised on every rank but the one that failed."""


FAULT_ENV = "SEEDVR_SP_FAULT"  # "RANK:WINDOW": that rank raises before that (1-based) window; for tests


def _injected_fault(ranks: Ranks, job: WindowJob) -> None:
    if os.environ.get(FAULT_ENV) == f"{ranks.rank}:{job.index}":
        raise RuntimeError(f"injected fault ({FAULT_ENV}) on rank {ranks.rank} before window {job.index}")


def _agree(error: Exception | None, meta: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `meta` once no rank failed; else raise on every rank (the failing one its own error).

    Called at the end of each round of windows, before any frames move: a rank whose window failed
    still reaches this collective, so no rank is left waiting for frames that never come.
    """
    outcomes = [None] * ranks.size
    mine = ("failed", f"{type(error).__name__}: {error}") if error is not None else ("ok", meta)
    dist.all_gather_object(outcomes, mine, group=ranks.group)
    failed = [(rank, text) for rank, (kind, text) in enumerate(outcomes) if kind == "failed"]
    if error is not None:
        raise error
    if failed:
        rank, text = failed[0]
        raise RankError(f"sequence-parallel rank {rank} of {ranks.size} failed: {text}")
    return [payload for _, payload in outcomes]


def _solo_round(
    round_jobs: list[WindowJob], task: WindowTask, solo: pipeline.RestorationModels, ranks: Ranks
) -> Iterator[tuple[WindowJob, torch.Tensor]]:
    """Rank r restores window r of the round alone; the main rank yields them all, in order.

    The other ranks' frames come one window at a time (a rank's `send` waits for the main rank's
    `recv`), so the main rank holds its own window and one received window at a time.
    """
    job, restored, error = round_jobs[ranks.rank], None, None
    try:
        _injected_fault(ranks, job)
        restored = task.restore(job, solo).contiguous()
        count_work("windows")
    except Exception as exc:  # noqa: BLE001 - raised again by _agree, on every rank
        error = exc
    shapes = _agree(error, None if restored is None else (tuple(restored.shape), restored.dtype), ranks)
    if not ranks.is_main:
        dist.send(restored, dist.get_global_rank(ranks.group, 0), group=ranks.group)
        return
    yield job, restored
    for rank in range(1, ranks.size):
        shape, dtype = shapes[rank]
        frames = torch.empty(shape, dtype=dtype, device=ranks.device)
        dist.recv(frames, dist.get_global_rank(ranks.group, rank), group=ranks.group)
        task.stages.window = round_jobs[rank].index  # progress while writing it names this window
        yield round_jobs[rank], frames


def windows_over_ranks(
    jobs: Iterable[WindowJob], task: WindowTask, ranks: Ranks, together: GroupWindow
) -> Iterator[tuple[WindowJob, torch.Tensor]]:
    """The window map of a group: windows dealt in rounds of `ranks.size`, one per rank, each rank
    restoring its own alone; a last round with fewer windows than ranks (and a one-window clip, an
    image) is restored window by window by all ranks together (`together`). Yields on the main rank
    only. Every rank reads every window's frames (cheap next to restoring them); noise is keyed by the
    window's first frame, so the output equals one process's whatever rank restores a window.
    """
    jobs = iter(jobs)
    solo = dataclasses.replace(task.models, dit=partial(run_dit, task.models.dit, ranks=ranks.alone()))
    while round_jobs := list(itertools.islice(jobs, ranks.size)):
        if len(round_jobs) == ranks.size:
            yield from _solo_round(round_jobs, task, solo, ranks)
            continue
        for job in round_jobs:
            task.stages.window = job.index
            _injected_fault(ranks, job)  # here the others wait in a collective: torchrun or the worker ends them
            restored = together(job.frames, task.models, task.options, task.plan, job.start, task.stages, ranks)
            count_work("group_windows")
            if ranks.is_main:
                yield job, restored


def _gather_work(ranks: Ranks) -> dict[int, dict[str, int]]:
    counts = [None] * ranks.size
    dist.all_gather_object(counts, dict(WORK), group=ranks.group)
    return dict(enumerate(counts))


def restore_file(
    src: str | Path,
    dst: str | Path,
    models: pipeline.RestorationModels,
    options: pipeline.RestoreOptions,
    ranks: Ranks,
    *,
    should_cancel: Callable[[], bool] | None = None,
    together: GroupWindow | None = None,
    **kwargs: Any,
) -> pipeline.RestoreResult:
    """`pipeline.restore_file` run together by every rank of `ranks`; only the main rank writes `dst`.

    All ranks must call it with the same arguments (the same input file on the same machine); `kwargs`
    are `restore_file`'s. Windows are dealt to the ranks (`windows_over_ranks`, with `together` for
    windows that all ranks restore at once: by default `seedvr.bands.restore_window_bands`, the exact
    split of one window into bands of rows); the ranks take the main rank's plan, so the result is the
    one-process result up to float round-off in a split DiT. `should_cancel` is polled on the main rank
    only and its answer shared, so every rank stops at the same window. The result's `work` holds
    every rank's work counts.
    """
    WORK.clear()
    if ranks.group is None:
        return pipeline.restore_file(src, dst, models, options, should_cancel=should_cancel, **kwargs)
    options = _from_main(lambda: _agreed_options(Path(src), models, options), ranks)
    if together is None:
        from seedvr.bands import restore_window_bands as together  # bands builds on this module

    models = dataclasses.replace(models, map_windows=partial(windows_over_ranks, ranks=ranks, together=together))
    cancelled = partial(_from_main, lambda: bool(should_cancel and should_cancel()), ranks)
    log.info("rank %d of %d restores %s%s", ranks.rank, ranks.size, src, " and writes it" if ranks.is_main else "")
    result = pipeline.restore_file(src, dst, models, options, should_cancel=cancelled, write=ranks.is_main, **kwargs)
    return dataclasses.replace(result, work=_gather_work(ranks))
