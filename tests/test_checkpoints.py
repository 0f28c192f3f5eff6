"""seedvr.checkpoints: file names, status, memory-mapped loading into meta-built modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from seedvr.checkpoints import (
    CHECKPOINT_FILES,
    CheckpointError,
    checkpoint_status,
    load_state_dict_file,
    load_text_embedding,
    load_weights,
    missing_checkpoint_message,
)
from seedvr.models import build_dit
from seedvr.models.vae import build_vae

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


class Rope(nn.Module):
    """Like the DiT's rotary embedding: a persistent fp32 table plus a non-persistent cache."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("freqs", 10000.0 ** -(torch.arange(0, 8, 2) / 8))
        self.register_buffer("cache", torch.empty(4, 4), persistent=False)

    def reset_buffers(self) -> None:
        self.cache = torch.outer(torch.arange(4.0), self.freqs)


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.rope = Rope()
        self.register_buffer("steps", torch.tensor([3, 5], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x)) + self.rope.cache.sum()


def _reference() -> Plain:
    torch.manual_seed(0)
    model = Plain()
    model.rope.reset_buffers()
    return model


def _meta() -> Plain:
    with torch.device("meta"):
        return Plain()


@pytest.fixture
def plain_pth(tmp_path) -> Path:
    path = tmp_path / "plain.pth"
    torch.save(_reference().state_dict(), path)
    return path


def test_file_names_and_status(tmp_path):
    assert CHECKPOINT_FILES == {
        "seedvr2_3b": "seedvr2_ema_3b.pth",
        "seedvr2_7b": "seedvr2_ema_7b.pth",
        "seedvr2_7b_sharp": "seedvr2_ema_7b_sharp.pth",
        "vae": "ema_vae.pth",
        "pos_emb": "pos_emb.pt",
        "neg_emb": "neg_emb.pt",
    }
    (tmp_path / "seedvr2_ema_3b.pth").write_bytes(b"x")
    (tmp_path / "ema_vae.pth").write_bytes(b"x")
    (tmp_path / "seedvr2_ema_7b.pth").mkdir()  # a folder of that name is not a checkpoint
    assert checkpoint_status(tmp_path) == {
        "seedvr2_3b": True,
        "seedvr2_7b": False,
        "seedvr2_7b_sharp": False,
        "vae": True,
    }


def test_missing_checkpoint_message_names_the_command():
    assert (
        missing_checkpoint_message("seedvr2_7b", "ckpts")
        == "checkpoint ckpts/seedvr2_ema_7b.pth not found (run scripts/download_models.py --model 7b)"
    )
    msg = missing_checkpoint_message("seedvr2_7b_sharp", "/runpod-volume/ckpts")
    assert msg == (
        "checkpoint /runpod-volume/ckpts/seedvr2_ema_7b_sharp.pth not found "
        "(run scripts/download_models.py --model 7b-sharp --dir /runpod-volume/ckpts)"
    )
    vae = missing_checkpoint_message("vae", "ckpts")
    assert vae.startswith("checkpoint ckpts/ema_vae.pth not found (run scripts/download_models.py --model ")
    assert "every model brings ema_vae.pth" in vae


def test_missing_file_raises_file_not_found_with_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"seedvr2_ema_3b\.pth not found .*--model 3b --dir"):
        load_state_dict_file(tmp_path / "seedvr2_ema_3b.pth")
    with pytest.raises(FileNotFoundError, match=r"pos_emb\.pt not found"):
        load_text_embedding(tmp_path / "pos_emb.pt")
    with pytest.raises(FileNotFoundError, match=r"other\.pth not found"):
        load_weights(_meta(), tmp_path / "other.pth", None, "cpu")


def _mixed_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        "w": torch.randn(3, 5),
        "half": torch.randn(4).to(torch.bfloat16),
        "index": torch.arange(6, dtype=torch.int64),
    }


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_state_dict_file_casts_float_tensors_only(tmp_path, suffix):
    state = _mixed_state()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)

    same = load_state_dict_file(path)
    assert {k: v.dtype for k, v in same.items()} == {k: v.dtype for k, v in state.items()}
    assert all(torch.equal(same[k], state[k]) for k in state)

    cast = load_state_dict_file(path, dtype=torch.float16)
    assert cast["w"].dtype == cast["half"].dtype == torch.float16
    assert cast["index"].dtype == torch.int64 and torch.equal(cast["index"], state["index"])
    assert torch.equal(cast["w"], state["w"].half()) and torch.equal(cast["half"], state["half"].half())


def test_pth_is_memory_mapped_when_not_cast(plain_pth):
    state = load_state_dict_file(plain_pth)
    loaded = torch.load(plain_pth, weights_only=True)
    # A memory-mapped tensor shares the file's pages: its storage cannot be resized.
    with pytest.raises(RuntimeError):
        state["proj.weight"].untyped_storage().resize_(0)
    assert torch.equal(state["proj.weight"], loaded["proj.weight"])


def test_wrapped_or_foreign_pth_is_refused(tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, wrapped)
    with pytest.raises(CheckpointError, match="not a flat state dict of tensors"):
        load_state_dict_file(wrapped)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_state_dict_file(other)


def test_load_weights_fills_a_meta_module(plain_pth):
    reference = _reference()
    model = load_weights(_meta(), plain_pth, torch.bfloat16, "cpu")

    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope.freqs.dtype == torch.float32  # buffers keep the file's dtype
    assert torch.equal(model.rope.freqs, reference.rope.freqs)
    assert torch.equal(model.steps, reference.steps)
    assert torch.equal(model.rope.cache, reference.rope.cache)  # rebuilt by reset_buffers()
    assert torch.equal(model.proj.weight, reference.proj.weight.bfloat16())
    assert all(p.requires_grad for p in model.parameters())

    x = torch.randn(2, 4)
    expected = reference.to(torch.bfloat16)(x.bfloat16())
    assert torch.equal(model(x.bfloat16()), expected)


def test_load_weights_keeps_file_dtype_without_cast(plain_pth):
    model = load_weights(_meta(), plain_pth, None, "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.norm.weight, _reference().norm.weight)


def _save(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


def test_strict_errors_list_first_keys_and_counts(tmp_path):
    state = _reference().state_dict()
    del state["proj.bias"], state["norm.weight"]
    state["extra.weight"] = torch.ones(1)
    path = _save(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_weights(_meta(), path, None, "cpu")
    msg = str(err.value)
    assert "edited.pth does not fit Plain" in msg
    assert "2 missing keys (proj.bias, norm.weight)" in msg
    assert "1 unexpected keys (extra.weight)" in msg


def test_many_missing_keys_are_summarised(tmp_path):
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    path = _save(tmp_path, {"0.weight": torch.zeros(2, 2)})
    first = r"0\.bias, 1\.weight, 1\.bias, 2\.weight, 2\.bias"
    with pytest.raises(CheckpointError, match=rf"11 missing keys \({first}, \.\.\. \(6 more\)\)"):
        load_weights(model, path, None, "cpu")


def test_shape_mismatch_is_named_before_anything_is_assigned(tmp_path):
    state = _reference().state_dict()
    state["proj.weight"] = torch.zeros(6, 5)
    path = _save(tmp_path, state)
    model = _meta()
    expected = r"1 shape mismatches \(proj\.weight: file \[6, 5\] vs model \[6, 4\]\)"
    with pytest.raises(CheckpointError, match=expected):
        load_weights(model, path, None, "cpu")
    assert all(p.is_meta for p in model.parameters())


def test_non_strict_load_still_refuses_parameters_left_on_meta(tmp_path):
    state = _reference().state_dict()
    del state["norm.bias"]
    with pytest.raises(CheckpointError, match=r"tensors still on the meta device \(norm\.bias\)"):
        load_weights(_meta(), _save(tmp_path, state), None, "cpu", strict=False)


def test_non_persistent_buffer_without_reset_hook_is_an_error(tmp_path):
    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.register_buffer("table", torch.ones(3), persistent=False)

    with torch.device("meta"):
        model = Cached()
    path = _save(tmp_path, {"weight": torch.ones(2)})
    with pytest.raises(CheckpointError, match=r"\(table\).*reset_buffers\(\)"):
        load_weights(model, path, None, "cpu")


def test_text_embedding(tmp_path):
    torch.manual_seed(2)
    emb = torch.randn(58, 64).bfloat16()
    torch.save(emb, tmp_path / "pos_emb.pt")
    loaded = load_text_embedding(tmp_path / "pos_emb.pt")
    assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, emb)
    assert torch.equal(load_text_embedding(tmp_path / "pos_emb.pt", torch.float32), emb.float())

    torch.save({"emb": emb}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="expected one 2-D tensor"):
        load_text_embedding(tmp_path / "dict.pt")
    torch.save(emb[0], tmp_path / "flat.pt")
    with pytest.raises(CheckpointError, match=r"found \[64\]"):
        load_text_embedding(tmp_path / "flat.pt")


# ------------------------------------------------------------------------------------------------
# Peak memory: the file is memory-mapped and each tensor cast on its own, so the anonymous memory
# (what the kernel cannot drop, unlike the file's page cache) grows by about one bf16 copy.

WIDTH, LAYERS = 2048, 12  # 12 x (2048^2 + 2048) fp32 = 201 MB

PROBE = """
import json, sys, threading, time
import torch
from torch import nn
from seedvr.checkpoints import load_weights

def anon_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

width, layers, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with torch.device("meta"):
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
base = anon_kb()
peak, done = base, threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, anon_kb())
        time.sleep(0.0005)

thread = threading.Thread(target=sample)
thread.start()
load_weights(model, path, torch.bfloat16, "cpu")
done.set()
thread.join()
after = anon_kb()
assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
print(json.dumps({"base": base, "peak": max(peak, after), "after": after,
                  "checksum": float(model[-1].weight.float().sum())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RssAnon")
def test_peak_memory_stays_near_one_bf16_copy(tmp_path):
    torch.manual_seed(3)
    state = {}
    for i in range(LAYERS):
        state[f"{i}.weight"] = torch.randn(WIDTH, WIDTH)
        state[f"{i}.bias"] = torch.randn(WIDTH)
    fp32_bytes = sum(t.numel() * 4 for t in state.values())
    checksum = float(state[f"{LAYERS - 1}.weight"].bfloat16().float().sum())
    path = tmp_path / "big.pth"
    torch.save(state, path)
    del state

    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(WIDTH), str(LAYERS), str(path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    growth, kept = (probe["peak"] - probe["base"]) * 1024, (probe["after"] - probe["base"]) * 1024
    assert probe["checksum"] == pytest.approx(checksum, rel=1e-6)
    assert kept > 0.4 * fp32_bytes  # the bf16 weights are there: the probe sees real allocations
    assert growth < 0.75 * fp32_bytes  # an unmapped load would peak at 1.5x (fp32 copy + bf16 copy)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_weights_onto_the_gpu_holds_one_fp32_tensor_at_most(tmp_path):
    torch.manual_seed(4)
    state = {f"{i}.weight": torch.randn(1024, 1024) for i in range(8)}
    state.update({f"{i}.bias": torch.randn(1024) for i in range(8)})
    path = tmp_path / "gpu.pth"
    torch.save(state, path)
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(8)])
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    load_weights(model, path, torch.bfloat16, "cuda")
    bf16_bytes = sum(t.numel() * 2 for t in state.values())
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert torch.cuda.memory_allocated() - base == pytest.approx(bf16_bytes, rel=0.01)
    assert torch.cuda.max_memory_allocated() - base <= bf16_bytes + 4 * 1024 * 1024 + 2**20
    assert torch.equal(model[3].weight.cpu(), state["3.weight"].bfloat16())


# ------------------------------------------------------------------------------------------------
# The fixture weights (official key names) under the real file names, into meta-built models.


def _resave_as_pth(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    state = load_state_dict_file(src)
    torch.save(state, dst)
    return state


def _check_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert set(state) <= set(loaded)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize(
    ("arch", "fixture", "name"), [("v2", "dit_v2", "seedvr2_3b"), ("v1", "dit_v1", "seedvr2_7b")]
)
def test_fixture_dit_weights_load_strictly_into_meta_built_model(tmp_path, arch, fixture, name):
    config = json.loads((FIXTURES / fixture / "config.json").read_text())
    path = tmp_path / CHECKPOINT_FILES[name]
    state = _resave_as_pth(FIXTURES / fixture / "weights.safetensors", path)
    with torch.device("meta"):
        model = build_dit(arch, config)
    _check_loaded(load_weights(model, path, None, "cpu", strict=True), state)


def _meta_vae() -> nn.Module:
    config = json.loads((FIXTURES / "vae" / "config.json").read_text())
    with torch.device("meta"):
        return build_vae(config)


def test_fixture_vae_weights_load_strictly_into_meta_built_model(tmp_path):
    model = _meta_vae()
    path = tmp_path / CHECKPOINT_FILES["vae"]
    state = _resave_as_pth(FIXTURES / "vae" / "weights.safetensors", path)
    model = load_weights(model, path, torch.bfloat16, "cpu", strict=True)
    _check_loaded(model, {k: v.bfloat16() for k, v in state.items()})


LEGACY = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}


def test_vae_maps_legacy_attention_names(tmp_path):
    model = _meta_vae()
    state = load_state_dict_file(FIXTURES / "vae" / "weights.safetensors")
    legacy = {}
    for key, tensor in state.items():
        for new, old in LEGACY.items():
            key = key.replace(f".attentions.0.{new}", f".attentions.0.{old}")
        legacy[key] = tensor
    assert legacy.keys() != state.keys()  # the fixture really has attention weights to rename
    path = tmp_path / CHECKPOINT_FILES["vae"]
    torch.save(legacy, path)
    _check_loaded(load_weights(model, path, None, "cpu", strict=True), state)
