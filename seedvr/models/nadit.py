"""NaDiT: the SeedVR2 diffusion transformer, v2 (3B) and v1 (7B), over packed native-resolution tokens.

Both versions share the block (joint video/text window attention, MLP, "ada single" modulation). They
differ in weight sharing (3B: separate video/text weights in the first `mm_layers` blocks, one shared
set after; 7B: separate everywhere), the MLP (SwiGLU / GELU), the rotary embedding (see rope.py) and
the output head (3B: RMSNorm plus modulation; 7B: Linear only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from seedvr.models.attention import VarlenPlan, make_plan, varlen_attention
from seedvr.models.layers import (
    AdaSingle,
    GeluMLP,
    PatchLinear,
    Streams,
    SwiGLUMLP,
    TimeEmbedding,
    patchify,
    rows,
    unpatchify,
)
from seedvr.models.rope import (
    apply_rotary,
    axial_angles,
    lang_frequencies,
    pixel_frequencies,
    rotation_table,
    window_linspace,
)
from seedvr.models.windows import WINDOW_METHODS, WindowLayout, build_layout


@dataclass
class NaDiTParams:
    """What the official constructor arguments mean for inference, checked once at build time."""

    arch: str  # "v2" (3B) or "v1" (7B)
    vid_in_channels: int
    vid_out_channels: int
    vid_dim: int
    txt_in_dim: int
    txt_dim: int
    emb_dim: int
    heads: int
    head_dim: int
    expand_ratio: int
    norm_eps: float
    qk_bias: bool
    patch: int
    mlp: str  # "swiglu" or "normal"
    windows: list[tuple[int, int, int]]
    window_methods: list[str]
    shared_attn: list[bool]  # per block: one weight set for video and text (qkv, out, qk-norms)
    shared_mlp: list[bool]
    shared_ada: list[bool]
    rope: str  # "mmrope3d" (v2) or "pixel" (v1)
    rope_dim: int
    out_norm: bool

    @property
    def num_layers(self) -> int:
        return len(self.windows)


_COMMON_KEYS = {
    "vid_in_channels", "vid_out_channels", "vid_dim", "txt_in_dim", "txt_dim", "emb_dim", "heads",
    "head_dim", "expand_ratio", "norm", "norm_eps", "ada", "qk_bias", "qk_norm", "patch_size",
    "num_layers", "mlp_type", "block_type", "window", "window_method",
}
_V2_KEYS = _COMMON_KEYS | {"mm_layers", "rope_type", "rope_dim", "vid_out_norm", "txt_in_norm", "msa_type"}
_V1_KEYS = _COMMON_KEYS | {"qk_rope", "shared_mlp", "shared_qkv"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"unsupported NaDiT config: {message}")


def _per_layer(value: Any, n: int, name: str) -> list:
    """A per-block setting given once or as a list of exactly `num_layers` entries."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple, str, bool)):
        _require(len(value) == n, f"{name} has {len(value)} entries for {n} layers")
        return list(value)
    return [value] * n


def parse_params(arch: str, config: Mapping[str, Any]) -> NaDiTParams:
    if arch not in ("v1", "v2"):
        raise ValueError(f"arch must be 'v2' (3B) or 'v1' (7B), got {arch!r}")
    unknown = set(config) - (_V2_KEYS if arch == "v2" else _V1_KEYS) - {"__object__"}
    _require(not unknown, f"unknown keys {sorted(unknown)} for arch {arch}")
    n = int(config["num_layers"])
    _require(config.get("norm") == "fusedrms" and config.get("qk_norm") == "fusedrms", "norm and qk_norm must be fusedrms")
    _require(config.get("ada") == "single", "ada must be 'single'")
    pt, ph, pw = config["patch_size"] if isinstance(config["patch_size"], (list, tuple)) else [config["patch_size"]] * 3
    _require(pt == 1 and ph == pw, "patch_size must be [1, p, p]")
    _require(all(b == "mmdit_sr" for b in _per_layer(config["block_type"], n, "block_type")), "block_type must be mmdit_sr")
    _require(isinstance(config["txt_in_dim"], int), "txt_in_dim must be an int")
    _require(config["emb_dim"] == 6 * config["vid_dim"], "emb_dim must be 6 * vid_dim")
    _require(config["txt_dim"] == config["vid_dim"], "txt_dim must equal vid_dim")
    _require(config["mlp_type"] in ("swiglu", "normal"), "mlp_type must be swiglu or normal")
    windows = [tuple(w) for w in _per_layer(config["window"], n, "window")]
    methods = _per_layer(config["window_method"], n, "window_method")
    _require(all(m in WINDOW_METHODS for m in methods), f"window_method entries must be in {WINDOW_METHODS}")
    if arch == "v2":
        mm = config["mm_layers"]
        separate = [i < mm for i in range(n)] if isinstance(mm, int) else _per_layer(mm, n, "mm_layers")
        shared = [not s for s in separate]
        _require(config.get("rope_type") == "mmrope3d", "v2 rope_type must be mmrope3d")
        _require(config.get("msa_type") in (None, "None"), "msa_type must be None")
        rope_dim = int(config.get("rope_dim") or config["head_dim"] // 2)
        _require(rope_dim <= config["head_dim"], "rope_dim exceeds head_dim")
        shared_attn, shared_mlp, shared_ada, rope = shared, shared, shared, "mmrope3d"
        out_norm = config.get("vid_out_norm") is not None
        _require(config.get("vid_out_norm") in (None, "fusedrms"), "vid_out_norm must be fusedrms")
    else:
        _require(config.get("qk_rope") is True, "v1 needs qk_rope: true")
        shared_attn = [bool(config.get("shared_qkv", False))] * n
        shared_mlp = [bool(config.get("shared_mlp", False))] * n
        shared_ada = [False] * n
        rope, rope_dim, out_norm = "pixel", config["head_dim"] // 2, False
    return NaDiTParams(
        arch=arch,
        vid_in_channels=config["vid_in_channels"],
        vid_out_channels=config["vid_out_channels"],
        vid_dim=config["vid_dim"],
        txt_in_dim=config["txt_in_dim"],
        txt_dim=config["txt_dim"],
        emb_dim=config["emb_dim"],
        heads=config["heads"],
        head_dim=config["head_dim"],
        expand_ratio=config["expand_ratio"],
        norm_eps=float(config["norm_eps"]),
        qk_bias=bool(config["qk_bias"]),
        patch=ph,
        mlp=config["mlp_type"],
        windows=windows,
        window_methods=methods,
        shared_attn=shared_attn,
        shared_mlp=shared_mlp,
        shared_ada=shared_ada,
        rope=rope,
        rope_dim=rope_dim,
        out_norm=out_norm,
    )


class RopeFrequencies(nn.Module):
    """Holds the checkpoint's `attn.rope.rope.freqs` buffer (strict loading needs it).

    The forward pass recomputes the frequencies from the config in float32 instead of reading this
    buffer, so that loading weights in bf16 cannot round them; `check` verifies they agree.
    """

    def __init__(self, freqs: torch.Tensor):
        super().__init__()
        self.rope = nn.Module()
        self.rope.register_buffer("freqs", freqs)

    def check(self, expected: torch.Tensor, name: str) -> None:
        got = self.rope.freqs
        if got.is_meta:
            return
        if got.shape != expected.shape or not torch.allclose(got.float().cpu(), expected, rtol=1e-2):
            raise ValueError(f"{name}: checkpoint rotary frequencies do not match the config")


class BlockContext(Protocol):
    """What the blocks and the output head read of a forward: the one type behind both the one-process
    `ForwardContext` and a sequence-parallel rank's `ShardedContext` (seedvr/parallel.py), whose layouts
    hold only the rank's windows and whose text mean is reduced across ranks."""

    txt_lens: list[int]

    def layout(self, window: tuple[int, int, int], method: str) -> tuple[WindowLayout, VarlenPlan, dict]:
        """Window layout, attention plan and rotary angles of the rows the blocks hold."""

    def emb_slot(self, layer: int, stream: str) -> torch.Tensor:
        """The [rows or 1, dim, 3] embedding slice of `layer` (0 attn, 1 mlp) for the stream's rows."""

    def text_mean(self, txt_out: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """Each text token's attention outputs averaged over its sample's windows."""

    def windowed(self, project: nn.Module, vid: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """`project` of the video rows the layout's windows attend over, in window order.

        The blocks' own rows, reordered then projected; a context whose rank holds only part of the
        rows the windows need (`RowContext`, seedvr/parallel.py) projects its rows and gathers the rest.
        """
        return project(vid[layout.order])

    def own_rows(self, vid_out: torch.Tensor) -> torch.Tensor:
        """The rows of an attention output [rows of `windowed`, C] that the blocks hold."""
        return vid_out


@dataclass
class ForwardContext(BlockContext):
    """Per-forward state shared by all blocks: sample sizes, embedding and the cached window layouts."""

    grids: list[tuple[int, int, int]]  # token grid per sample after patching
    txt_lens: list[int]
    emb: torch.Tensor  # [B, 6*dim]
    freqs: torch.Tensor  # rotary frequencies per axis, float32
    rope: str
    _layouts: dict = field(default_factory=dict)

    @property
    def vid_lens(self) -> list[int]:
        return [t * h * w for t, h, w in self.grids]

    def emb_slot(self, layer: int, stream: str) -> torch.Tensor:
        """The [rows or 1, dim, 3] embedding slice of `layer` (0 attn, 1 mlp) expanded to the stream's rows."""
        e = self.emb.unflatten(-1, (-1, 2, 3))[:, :, layer]
        return rows(e, self.vid_lens if stream == "vid" else self.txt_lens)

    def layout(self, window: tuple[int, int, int], method: str) -> tuple[WindowLayout, VarlenPlan, dict]:
        """Window layout, attention plan and rotary tables of one window kind, built on first use.

        `NaDiT.forward` builds every kind before the first block, so that a compiled block only reads them.
        """
        key = (window, method)
        if key not in self._layouts:
            device = self.emb.device
            layout = build_layout(self.grids, self.txt_lens, window, method, device)
            plan = make_plan(layout.seq_lens, device, self.emb.dtype)
            self._layouts[key] = (layout, plan, self._rotations(layout))
        return self._layouts[key]

    def text_mean(self, txt_out: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """Each text token's attention outputs [sum(windows_b * L_b), C] averaged over its sample's windows."""
        parts = txt_out.split([n * length for n, length in zip(layout.window_count, self.txt_lens)])
        return torch.cat([o.view(n, length, -1).mean(0) for o, n, length in zip(parts, layout.window_count, self.txt_lens)])

    def _rotations(self, layout: WindowLayout) -> dict:
        if self.rope == "pixel":
            return {"vid": rotation_table(axial_angles(window_linspace(layout.local, layout.extent), self.freqs))}
        # windows keep samples contiguous, so the windowed rows of sample b are its vid_lens[b] tokens
        device = layout.local.device
        text_offset = torch.tensor(self.txt_lens, device=device).repeat_interleave(torch.tensor(self.vid_lens, device=device))
        vid_pos = layout.local + F.pad(text_offset[:, None], (0, 2))
        txt_pos = layout.txt_pos[:, None].expand(-1, 3)
        return {name: rotation_table(axial_angles(pos, self.freqs)) for name, pos in (("vid", vid_pos), ("txt", txt_pos))}


class Attention(nn.Module):
    """Joint window attention: each window's video tokens attend to themselves and the sample's text."""

    def __init__(self, p: NaDiTParams, i: int):
        super().__init__()
        inner = p.heads * p.head_dim
        shared = p.shared_attn[i]
        self.heads, self.head_dim = p.heads, p.head_dim
        self.window, self.method = p.windows[i], p.window_methods[i]
        self.proj_qkv = Streams(lambda: nn.Linear(p.vid_dim, 3 * inner, bias=p.qk_bias), shared)
        self.proj_out = Streams(lambda: nn.Linear(inner, p.vid_dim), shared)
        norm_shared = shared if p.arch == "v2" else False
        self.norm_q = Streams(lambda: nn.RMSNorm(p.head_dim, eps=p.norm_eps), norm_shared)
        self.norm_k = Streams(lambda: nn.RMSNorm(p.head_dim, eps=p.norm_eps), norm_shared)
        self.rope = RopeFrequencies(model_frequencies(p))
        self.rotate_text = p.rope == "mmrope3d"

    def _qkv(self, qkv: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected rows [L, 3 * inner] -> normed q, k and v [L, heads, head_dim]."""
        q, k, v = qkv.unflatten(-1, (3, self.heads, self.head_dim)).unbind(1)
        return self.norm_q.get(stream)(q), self.norm_k.get(stream)(k), v

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, ctx: BlockContext) -> tuple[torch.Tensor, torch.Tensor]:
        layout, plan, rotations = ctx.layout(self.window, self.method)
        vq, vk, vv = self._qkv(ctx.windowed(self.proj_qkv.get("vid"), vid, layout), "vid")
        tq, tk, tv = self._qkv(self.proj_qkv.get("txt")(txt), "txt")
        vq, vk = apply_rotary(vq, rotations["vid"]), apply_rotary(vk, rotations["vid"])
        if self.rotate_text:
            tq = apply_rotary(tq[layout.txt_source], rotations["txt"])
            tk = apply_rotary(tk[layout.txt_source], rotations["txt"])
        q, k, v = (torch.cat([a, b])[layout.gather] for a, b in ((vq, tq), (vk, tk), (vv, tv)))
        out = varlen_attention(q, k, v, plan).flatten(1)
        vid_out = ctx.own_rows(out[layout.vid_rows][layout.inverse])
        txt_out = ctx.text_mean(out[layout.txt_rows], layout)
        return self.proj_out.get("vid")(vid_out), self.proj_out.get("txt")(txt_out)


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


class Block(nn.Module):
    """norm -> modulate -> attention -> gate -> residual, then the same around the MLP, per stream."""

    def __init__(self, p: NaDiTParams, i: int):
        super().__init__()
        last_vid_only = p.arch == "v2" and i == p.num_layers - 1
        mlp = (lambda: SwiGLUMLP(p.vid_dim, p.expand_ratio)) if p.mlp == "swiglu" else (lambda: GeluMLP(p.vid_dim, p.expand_ratio))
        self.eps = p.norm_eps
        self.attn = Attention(p, i)
        self.mlp = Streams(mlp, p.shared_mlp[i], vid_only=last_vid_only)
        self.ada = Streams(lambda: AdaSingle(p.vid_dim), p.shared_ada[i], vid_only=last_vid_only)

    def _modulated(self, x: torch.Tensor, stream: str, layer: int, ctx: BlockContext) -> torch.Tensor:
        ada = self.ada.get(stream)
        x = _rms(x, self.eps)
        return x if ada is None else ada.modulate_in(x, ctx.emb_slot(layer, stream), ("attn", "mlp")[layer])

    def _gated(self, x: torch.Tensor, stream: str, layer: int, ctx: BlockContext) -> torch.Tensor:
        ada = self.ada.get(stream)
        return x if ada is None else ada.modulate_out(x, ctx.emb_slot(layer, stream), ("attn", "mlp")[layer])

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, ctx: BlockContext) -> tuple[torch.Tensor, torch.Tensor]:
        va, ta = self.attn(self._modulated(vid, "vid", 0, ctx), self._modulated(txt, "txt", 0, ctx), ctx)
        vid = vid + self._gated(va, "vid", 0, ctx)
        txt = txt + self._gated(ta, "txt", 0, ctx)
        vid = vid + self._gated(self.mlp.get("vid")(self._modulated(vid, "vid", 1, ctx)), "vid", 1, ctx)
        if self.mlp.get("txt") is not None:  # the 3B last block has no text MLP; its text output is unused
            txt = txt + self._gated(self.mlp.get("txt")(self._modulated(txt, "txt", 1, ctx)), "txt", 1, ctx)
        return vid, txt


def model_frequencies(p: NaDiTParams) -> torch.Tensor:
    return lang_frequencies(p.rope_dim) if p.rope == "mmrope3d" else pixel_frequencies(p.head_dim)


class NaDiT(nn.Module):
    """`dit(vid [L, C_in], txt [Lt, C_txt], vid_shape [B, 3], txt_shape [B, 1], timestep [B]) -> [L, C_out]`.

    `vid` packs each sample's latent (T, H, W, C_in) row-major; the output uses the same packing.
    Computation runs in the dtype of the weights (fp32 on CPU, bf16 on GPU).
    """

    def __init__(self, p: NaDiTParams):
        super().__init__()
        self.params = p
        self.vid_in = PatchLinear(p.vid_in_channels * p.patch * p.patch, p.vid_dim)
        self.txt_in = nn.Linear(p.txt_in_dim, p.txt_dim) if p.txt_in_dim != p.txt_dim else nn.Identity()
        self.emb_in = TimeEmbedding(p.vid_dim, p.emb_dim)
        self.blocks = nn.ModuleList(Block(p, i) for i in range(p.num_layers))
        if p.out_norm:
            self.vid_out_norm = nn.RMSNorm(p.vid_dim, eps=p.norm_eps)
            self.vid_out_ada = AdaSingle(p.vid_dim, layers=("out",), modes=("in",))
        self.vid_out = PatchLinear(p.vid_dim, p.vid_out_channels * p.patch * p.patch)
        self.register_load_state_dict_post_hook(_check_rope_buffers)

    @property
    def dtype(self) -> torch.dtype:
        return self.vid_in.proj.weight.dtype

    def forward(
        self,
        vid: torch.Tensor,
        txt: torch.Tensor,
        vid_shape: torch.Tensor,
        txt_shape: torch.Tensor,
        timestep: torch.Tensor | float,
    ) -> torch.Tensor:
        patches, t, ctx, shapes = self.prepare(vid, txt, vid_shape, txt_shape, timestep)
        for block in self.blocks:  # layouts and their index maps (host work) before any block runs
            ctx.layout(block.attn.window, block.attn.method)
        x = self.vid_in(patches)
        for block in self.blocks:
            x, t = block(x, t, ctx)
        return unpatchify(self.project_out(x, ctx), shapes, self.params.patch)

    def prepare(
        self,
        vid: torch.Tensor,
        txt: torch.Tensor,
        vid_shape: torch.Tensor,
        txt_shape: torch.Tensor,
        timestep: torch.Tensor | float,
    ) -> tuple[torch.Tensor, torch.Tensor, ForwardContext, list[tuple[int, int, int]]]:
        """Everything before the blocks except `vid_in`: patches [L, p*p*C], text tokens, context, shapes.

        Split from `forward` so that sequence parallelism (seedvr/parallel.py) can embed only its rows.
        """
        p = self.params
        shapes = [tuple(s) for s in vid_shape.tolist()]
        _check_inputs(vid, txt, shapes, txt_shape, p)
        grids = [(t, h // p.patch, w // p.patch) for t, h, w in shapes]
        txt_lens = txt_shape[:, 0].tolist()
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=vid.device).reshape(-1)
        timestep = timestep.expand(len(shapes)) if timestep.numel() == 1 else timestep
        patches = patchify(vid.to(self.dtype), shapes, p.patch)
        t = self.txt_in(txt.to(self.dtype))
        ctx = ForwardContext(
            grids=grids, txt_lens=txt_lens, emb=self.emb_in(timestep),
            freqs=model_frequencies(p).to(vid.device), rope=p.rope,
        )
        return patches, t, ctx, shapes

    def project_out(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """Per-token output head (before unpatching): final norm and modulation (3B), then `vid_out`."""
        if self.params.out_norm:
            # The official head reads the blocks' cached *attention* embedding slice (its own
            # "out" slot is never computed), plus its own out_shift/out_scale.
            x = self.vid_out_ada.modulate_in(self.vid_out_norm(x), ctx.emb_slot(0, "vid"), "out")
        return self.vid_out(x)


def _check_inputs(vid: torch.Tensor, txt: torch.Tensor, shapes: list, txt_shape: torch.Tensor, p: NaDiTParams) -> None:
    if vid.ndim != 2 or vid.shape[1] != p.vid_in_channels:
        raise ValueError(f"vid must be [L, {p.vid_in_channels}], got {list(vid.shape)}")
    if vid.shape[0] != sum(t * h * w for t, h, w in shapes):
        raise ValueError("vid rows do not match vid_shape")
    if any(h % p.patch or w % p.patch for _, h, w in shapes):
        raise ValueError(f"latent height and width must be multiples of {p.patch}, got {shapes}")
    if txt.ndim != 2 or txt.shape[1] != p.txt_in_dim or txt.shape[0] != int(txt_shape.sum()):
        raise ValueError(f"txt must be [sum(txt_shape), {p.txt_in_dim}], got {list(txt.shape)}")
    if len(txt_shape) != len(shapes):
        raise ValueError("vid_shape and txt_shape must have one row per sample")


def _check_rope_buffers(model: nn.Module, incompatible: Any) -> None:
    expected = model_frequencies(model.params)
    for i, block in enumerate(model.blocks):
        block.attn.rope.check(expected, f"blocks.{i}.attn.rope.rope.freqs")


def build_dit(arch: str, config: Mapping[str, Any]) -> NaDiT:
    """Build NaDiT v2 (3B) or v1 (7B) from the official constructor arguments (`dit.model` of our configs)."""
    return NaDiT(parse_params(arch, config))
