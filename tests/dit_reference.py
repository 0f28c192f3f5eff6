"""A slow, loop-by-loop NaDiT written straight from shared/spec/seedvr2.md §2-4, for tests only.

It shares no code with seedvr.models: it reads the state dict by name and walks samples, windows and
heads one at a time with explicit softmax. Checked against the official fixtures, it then serves as
the reference for configs and shapes the fixtures do not cover.
"""

from __future__ import annotations

import math

import torch


def _windows(t: int, h: int, w: int, shifted: bool) -> list[tuple[range, range, range]]:
    scale = math.sqrt(45 * 80 / (h * w))
    sizes = [math.ceil(min(t, 30) / 4), math.ceil(round(h * scale) / 3), math.ceil(round(w * scale) / 3)]
    axes = []
    for length, size in zip((t, h, w), sizes):
        if not shifted:
            count, shift = math.ceil(length / size), 0.0
        elif size < length:
            count, shift = math.ceil((length - 0.5) / size) + 1, 0.5
        else:
            count, shift = 1, 0.0
        ext = []
        for i in range(count):
            a = max(int((i - shift) * size), 0)
            b = min(int((i - shift + 1) * size), length)
            if b > a:
                ext.append(range(a, b))
        axes.append(ext)
    return [(rt, rh, rw) for rw in axes[2] for rh in axes[1] for rt in axes[0]]


def _rotate(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """x [n, D], theta [n, P]: rotate pairs (2j, 2j+1) of the first 2P channels."""
    out = x.clone()
    for j in range(theta.shape[1]):
        c, s = torch.cos(theta[:, j]), torch.sin(theta[:, j])
        a, b = x[:, 2 * j], x[:, 2 * j + 1]
        out[:, 2 * j] = a * c - b * s
        out[:, 2 * j + 1] = b * c + a * s
    return out


def reference_dit(arch: str, cfg: dict, sd: dict, vid, txt, vid_shape, txt_shape, timestep) -> torch.Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    d, heads, hd, eps = cfg["vid_dim"], cfg["heads"], cfg["head_dim"], cfg["norm_eps"]
    n_layers = cfg["num_layers"]
    methods = cfg["window_method"]
    if arch == "v2":
        mm = cfg["mm_layers"]
        rope_dim = cfg.get("rope_dim") or hd // 2
        fdim = rope_dim // 3
        freqs = 1.0 / 10000 ** (torch.arange(0, fdim, 2)[: fdim // 2].double() / fdim)
    else:
        fdim = (hd // 2) // 3
        freqs = torch.linspace(1.0, 128.0, fdim // 2).double() * math.pi

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def rms(x, w=None):
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
        return y * w if w is not None else y

    def name(i, module, stream):
        shared = arch == "v2" and i >= mm
        return f"blocks.{i}.{module}.{'all' if shared else stream}"

    def mlp(x, key):
        if cfg["mlp_type"] == "swiglu":
            return lin(silu(lin(x, key + ".proj_in_gate")) * lin(x, key + ".proj_in"), key + ".proj_out")
        return lin(torch.nn.functional.gelu(lin(x, key + ".proj_in"), approximate="tanh"), key + ".proj_out")

    silu = torch.nn.functional.silu

    # timestep embedding
    t = torch.as_tensor(timestep).double().reshape(-1)
    half = 128
    f = torch.exp(-math.log(10000.0) * torch.arange(half).double() / half)
    s = torch.cat([torch.sin(t[:, None] * f), torch.cos(t[:, None] * f)], -1)
    e = lin(silu(lin(silu(lin(s, "emb_in.proj_in")), "emb_in.proj_hid")), "emb_in.proj_out")
    E = e.view(-1, d, 2, 3)

    shapes = [tuple(x) for x in vid_shape.tolist()]
    tlens = txt_shape[:, 0].tolist()
    vids = list(vid.double().split([a * b * c for a, b, c in shapes]))
    txts = list(txt.double().split(tlens))
    grids, xs, ts = [], [], []
    for v, (T, H, W), tx in zip(vids, shapes, txts):
        v = v.view(T, H // 2, 2, W // 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(T, H // 2, W // 2, -1)
        grids.append((T, H // 2, W // 2))
        xs.append(lin(v, "vid_in.proj"))
        ts.append(lin(tx, "txt_in") if "txt_in.weight" in sd else tx)

    for i in range(n_layers):
        last = arch == "v2" and i == n_layers - 1
        shifted = methods[i] == "720pswin_by_size_bysize"

        def ada(x, b, stream, layer, mode):
            key = name(i, "ada", stream)
            if last and stream == "txt":
                return x
            li = 0 if layer == "attn" else 1
            if mode == "in":
                return x * (E[b, :, li, 1] + sd[f"{key}.{layer}_scale"]) + (E[b, :, li, 0] + sd[f"{key}.{layer}_shift"])
            return x * (E[b, :, li, 2] + sd[f"{key}.{layer}_gate"])

        def qkv(x, stream):
            y = lin(x, name(i, "attn.proj_qkv", stream)).view(-1, 3, heads, hd)
            nq, nk = name(i, "attn.norm_q", stream), name(i, "attn.norm_k", stream)
            return rms(y[:, 0], sd[nq + ".weight"]), rms(y[:, 1], sd[nk + ".weight"]), y[:, 2]

        # text rows the official v2 code feeds to each text position (see windows._repeated_text_rows)
        copies = [(b, j) for b, (T, H, W) in enumerate(grids) for _ in _windows(T, H, W, shifted) for j in range(tlens[b])]
        new_xs, new_ts = [], []
        for b, ((T, H, W), x, tx) in enumerate(zip(grids, xs, ts)):
            va = ada(rms(x), b, "vid", "attn", "in")
            ta = ada(rms(tx), b, "txt", "attn", "in")
            vq, vk, vv = qkv(va.reshape(-1, d), "vid")
            vq, vk, vv = (y.view(T, H, W, heads, hd) for y in (vq, vk, vv))
            tq, tk, tv = qkv(ta, "txt")
            if arch == "v2":
                start = sum(tlens[:b])
                srcs = copies[start : start + tlens[b]]
                tq_all, tk_all = [], []
                for sb, j in srcs:
                    sq, sk, _ = qkv(ada(rms(ts[sb]), sb, "txt", "attn", "in"), "txt")
                    theta = torch.cat([j * freqs] * 3)[None]
                    tq_all.append(torch.stack([_rotate(sq[j : j + 1, h], theta)[0] for h in range(heads)]))
                    tk_all.append(torch.stack([_rotate(sk[j : j + 1, h], theta)[0] for h in range(heads)]))
                tq, tk = torch.stack(tq_all), torch.stack(tk_all)
            vout = torch.zeros(T, H, W, heads, hd, dtype=torch.float64)
            tout = torch.zeros(tlens[b], heads, hd, dtype=torch.float64)
            wins = _windows(T, H, W, shifted)
            for rt, rh, rw in wins:
                idx = [(a, c, g) for a in rt for c in rh for g in rw]
                if arch == "v2":
                    pos = torch.tensor([[tlens[b] + a - rt[0], c - rh[0], g - rw[0]] for a, c, g in idx]).double()
                else:
                    lins = [torch.linspace(-1, 1, len(r)).double() for r in (rt, rh, rw)]
                    pos = torch.stack([torch.stack([lins[0][a - rt[0]], lins[1][c - rh[0]], lins[2][g - rw[0]]]) for a, c, g in idx])
                theta = torch.cat([pos[:, k : k + 1] * freqs for k in range(3)], -1)
                for h in range(heads):
                    q = torch.stack([vq[a, c, g, h] for a, c, g in idx])
                    k = torch.stack([vk[a, c, g, h] for a, c, g in idx])
                    v = torch.stack([vv[a, c, g, h] for a, c, g in idx])
                    q, k = _rotate(q, theta), _rotate(k, theta)
                    q = torch.cat([q, tq[:, h]])
                    k = torch.cat([k, tk[:, h]])
                    v = torch.cat([v, tv[:, h]])
                    o = torch.softmax(q @ k.T / math.sqrt(hd), -1) @ v
                    for n, (a, c, g) in enumerate(idx):
                        vout[a, c, g, h] = o[n]
                    tout[:, h] += o[len(idx):] / len(wins)
            va = lin(vout.reshape(T, H, W, -1), name(i, "attn.proj_out", "vid"))
            ta = lin(tout.reshape(tlens[b], -1), name(i, "attn.proj_out", "txt"))
            x = x + ada(va, b, "vid", "attn", "out")
            tx = tx + ada(ta, b, "txt", "attn", "out")
            x = x + ada(mlp(ada(rms(x), b, "vid", "mlp", "in"), name(i, "mlp", "vid")), b, "vid", "mlp", "out")
            if not last:
                tx = tx + ada(mlp(ada(rms(tx), b, "txt", "mlp", "in"), name(i, "mlp", "txt")), b, "txt", "mlp", "out")
            new_xs.append(x)
            new_ts.append(tx)
        xs, ts = new_xs, new_ts

    outs = []
    for b, (x, (T, H, W)) in enumerate(zip(xs, shapes)):
        if "vid_out_norm.weight" in sd:
            x = rms(x, sd["vid_out_norm.weight"])
            x = x * (E[b, :, 0, 1] + sd["vid_out_ada.out_scale"]) + (E[b, :, 0, 0] + sd["vid_out_ada.out_shift"])
        y = lin(x, "vid_out.proj").view(T, H // 2, W // 2, 2, 2, -1).permute(0, 1, 3, 2, 4, 5)
        outs.append(y.reshape(T * H * W, -1))
    return torch.cat(outs)
