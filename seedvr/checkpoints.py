"""The flat checkpoint folder: file names, memory-mapped loading into meta-built modules, hub download.

Every model reads its files from one flat folder (`SEEDVR_CKPT_DIR`, default `./ckpts`), the layout
the official inference scripts use. Loading never holds two full copies of a checkpoint: `.pth`
files are memory-mapped and each tensor is cast on its own, straight into a module built on the meta
device. Downloads resume where an interrupted run stopped, which matters for 33 GB files.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import HfFileMetadata, get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import WeakFileLock, build_hf_headers
from huggingface_hub.utils import tqdm as hf_tqdm
from safetensors import safe_open
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_FILES: dict[str, str] = {
    "seedvr2_3b": "seedvr2_ema_3b.pth",
    "seedvr2_7b": "seedvr2_ema_7b.pth",
    "seedvr2_7b_sharp": "seedvr2_ema_7b_sharp.pth",
    "vae": "ema_vae.pth",
    "pos_emb": "pos_emb.pt",
    "neg_emb": "neg_emb.pt",
}
STATUS_FILES = ("seedvr2_3b", "seedvr2_7b", "seedvr2_7b_sharp", "vae")
SHARED_FILES = ("vae", "pos_emb", "neg_emb")

REPO_3B = "ByteDance-Seed/SeedVR2-3B"
REPO_7B = "ByteDance-Seed/SeedVR2-7B"
# The shared files always come from the 3B repository: third-party download scripts fetch
# ema_vae.pth, pos_emb.pt and neg_emb.pt from there, while pos_emb.pt in the 7B one is unconfirmed.
HUB_REPOS: dict[str, str] = {
    "seedvr2_3b": REPO_3B,
    "seedvr2_7b": REPO_7B,
    "seedvr2_7b_sharp": REPO_7B,
    "vae": REPO_3B,
    "pos_emb": REPO_3B,
    "neg_emb": REPO_3B,
}
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "3b": ("seedvr2_3b",),
    "7b": ("seedvr2_7b",),
    "7b-sharp": ("seedvr2_7b_sharp",),
    "all": ("seedvr2_3b", "seedvr2_7b", "seedvr2_7b_sharp"),
}
# Published sizes of the current hub revisions (docs/checkpoints.md; the embeddings rounded): disk planning.
FILE_BYTES: dict[str, int] = {
    "seedvr2_3b": 13_566_090_228,
    "seedvr2_7b": 32_958_774_606,
    "seedvr2_7b_sharp": 32_958_774_606,
    "vae": 1_002_691_902,
    "pos_emb": 600_000,
    "neg_emb": 700_000,
}
DEFAULT_CKPT_DIR = Path("ckpts")
PARTIAL_DIR = ".incomplete"
# Where RunPod puts an endpoint's cached model (a Hugging Face hub cache) before the worker starts.
RUNPOD_MODEL_CACHE = Path("/runpod-volume/huggingface-cache/hub")


class CheckpointError(RuntimeError):
    """A checkpoint file exists but does not fit: bad format, wrong keys or shapes."""


class DownloadError(RuntimeError):
    """A hub download failed or delivered something other than what the hub announced."""


class HubUnreachable(DownloadError):
    """The hub did not answer for a file (no network, no access, no such file)."""


def default_ckpt_dir() -> Path:
    return Path(os.environ.get("SEEDVR_CKPT_DIR") or DEFAULT_CKPT_DIR)


def locate(filename: str, folders: Sequence[Path]) -> Path | None:
    """The file in the first folder that has it: several flat folders act as one."""
    return next((folder / filename for folder in folders if (folder / filename).is_file()), None)


def checkpoint_status(folders: str | Path | Sequence[Path]) -> dict[str, bool]:
    """Which model files are present: what the worker's health answer reports."""
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else folders
    return {name: locate(CHECKPOINT_FILES[name], folders) is not None for name in STATUS_FILES}


def cached_snapshot(cache: Path, repo_id: str) -> Path | None:
    """`repo_id`'s snapshot in a Hugging Face hub cache (the layout of RunPod's cached models): the revision
    `refs/main` names, else the newest snapshot. Its files carry the repository's names, so the snapshot is
    a flat checkpoint folder as it is."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshots = repo / "snapshots"
    try:
        ref = repo / "refs" / "main"
        named = snapshots / ref.read_text().strip() if ref.is_file() else None
        if named is not None and named.is_dir():
            return named
        found = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    except OSError:  # an unreadable cache is no cache
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _download_hint(name: str, ckpt_dir: Path) -> str:
    choice = {files[0]: model for model, files in MODEL_CHOICES.items() if len(files) == 1}.get(name)
    model = choice or "3b|7b|7b-sharp"
    hint = f"scripts/download_models.py --model {model}"
    if ckpt_dir != DEFAULT_CKPT_DIR:
        hint += f" --dir {ckpt_dir}"
    if choice is None:
        hint += f"; every model brings {', '.join(CHECKPOINT_FILES[s] for s in SHARED_FILES)}"
    return hint


def missing_checkpoint_message(name: str, ckpt_dir: str | Path) -> str:
    """The user-facing message for a missing file, naming the command that fetches it."""
    ckpt_dir = Path(ckpt_dir)
    return f"checkpoint {ckpt_dir / CHECKPOINT_FILES[name]} not found (run {_download_hint(name, ckpt_dir)})"


def _require_file(path: Path) -> None:
    if path.is_file():
        return
    name = next((n for n, f in CHECKPOINT_FILES.items() if f == path.name), None)
    if name is None:
        raise FileNotFoundError(f"checkpoint {path} not found")
    raise FileNotFoundError(missing_checkpoint_message(name, path.parent))


# ------------------------------------------------------------------------------------------------
# Loading


def _cast(t: torch.Tensor, dtype: torch.dtype | None, device: torch.device | str) -> torch.Tensor:
    """Move first, then cast: on a GPU the cast is cheap, and from an mmap the CPU copy is skipped."""
    t = t.to(device=device)
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype=dtype)
    return t


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict, memory-mapped: the official loaders hand `torch.load`'s result straight to
    `load_state_dict`, so the released files hold no wrapper such as {"state_dict": ...}."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found a {type(state).__name__}")
    odd = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if odd:
        raise CheckpointError(
            f"{path}: not a flat state dict of tensors ({len(odd)} other entries, e.g. {odd[:3]})"
        )
    return dict(state)


def _iter_tensors(path: Path) -> Iterable[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    elif path.suffix in (".pth", ".pt"):
        yield from _read_pth(path).items()
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected .pth, .pt or .safetensors)")


def _load(
    path: str | Path, dtype_of: Callable[[str], torch.dtype | None], device: torch.device | str
) -> dict[str, torch.Tensor]:
    path = Path(path)
    _require_file(path)
    return {key: _cast(t, dtype_of(key), device) for key, t in _iter_tensors(path)}


def load_state_dict_file(
    path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """A state dict with its float tensors cast to `dtype` one by one (integer tensors untouched).

    With `dtype=None` on the CPU the tensors of a `.pth` stay views of the memory map: no copy.
    """
    return _load(path, lambda _key: dtype, device)


def _summary(kind: str, names: list[str], limit: int = 5) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{len(names)} {kind} ({', '.join(names[:limit])}{more})"


def _check_shapes(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Shape errors before any tensor is assigned, so a mismatch never leaves a half-loaded model.
    Keys the module renames in its own pre-hooks (legacy VAE names) are checked by torch later."""
    expected = module.state_dict()
    bad = [
        f"{k}: file {list(t.shape)} vs model {list(expected[k].shape)}"
        for k, t in state.items()
        if k in expected and t.shape != expected[k].shape
    ]
    if bad:
        summary = _summary("shape mismatches", bad)
        raise CheckpointError(f"{path.name} does not fit {type(module).__name__}: {summary}")


def materialize_buffers(module: nn.Module, device: torch.device | str) -> None:
    """Give meta-built modules their non-persistent buffers, which no checkpoint holds.

    Convention: a module that owns such buffers defines `reset_buffers()`, which computes them with
    factory functions and no explicit device; it is called under `torch.device(device)`.
    """
    for sub in module.modules():
        if any(b.is_meta for b in sub.buffers(recurse=False)) and hasattr(sub, "reset_buffers"):
            with torch.device(device):
                sub.reset_buffers()
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(
            f"{type(module).__name__}: {_summary('tensors still on the meta device', left)}; "
            "parameters must come from the checkpoint, non-persistent buffers from reset_buffers()"
        )


def load_weights(
    module: nn.Module,
    path: str | Path,
    dtype: torch.dtype | None,
    device: torch.device | str,
    strict: bool = True,
) -> nn.Module:
    """Fill `module` (typically built under `torch.device("meta")`) from a checkpoint file.

    Parameters are cast to `dtype`; buffers keep the file's dtype (the rotary frequency tables must
    stay fp32). Tensors are assigned, not copied, so peak memory is one copy in the target dtype.
    """
    path = Path(path)
    buffers = {name for name, _ in module.named_buffers()}
    state = _load(path, lambda key: None if key in buffers else dtype, device)
    _check_shapes(module, state, path)
    result = module.load_state_dict(state, strict=False, assign=True)
    problems = []
    if result.missing_keys:
        problems.append(_summary("missing keys", result.missing_keys))
    if result.unexpected_keys:
        problems.append(_summary("unexpected keys", result.unexpected_keys))
    if strict and problems:
        raise CheckpointError(f"{path.name} does not fit {type(module).__name__}: {'; '.join(problems)}")
    if problems:
        logger.warning("%s loaded non-strictly: %s", path.name, "; ".join(problems))
    materialize_buffers(module, device)
    return module


def load_text_embedding(
    path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """pos_emb.pt / neg_emb.pt: one pickled tensor [tokens, 5120] (bf16 in the release)."""
    path = Path(path)
    _require_file(path)
    emb = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        shape = list(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise CheckpointError(f"{path}: expected one 2-D tensor [tokens, channels], found {shape}")
    return _cast(emb, dtype, device)


# ------------------------------------------------------------------------------------------------
# Download


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository and where it lands in the flat folder."""

    repo_id: str
    filename: str
    revision: str = "main"

    def describe(self) -> str:
        return f"{self.filename} from {self.repo_id}@{self.revision}"


def hub_files(models: Iterable[str], revision: str = "main") -> list[HubFile]:
    """The files of the chosen models plus the shared ones, each once (the VAE is shared)."""
    names: list[str] = []
    for model in models:
        if model not in MODEL_CHOICES:
            raise ValueError(f"unknown model {model!r}: choose from {', '.join(MODEL_CHOICES)}")
        names += MODEL_CHOICES[model]
    names += SHARED_FILES
    unique = dict.fromkeys(names)
    return [HubFile(HUB_REPOS[n], CHECKPOINT_FILES[n], revision) for n in unique]


def _silent_bar(progress: bool):
    """None keeps huggingface_hub's bar (shown on a terminal); log lines report progress otherwise."""
    return None if progress else functools.partial(hf_tqdm, disable=True)


def _complete(target: Path, size: int) -> bool:
    if target.is_file() and target.stat().st_size == size:
        logger.info("%s: present (%d bytes), skipped", target, size)
        return True
    return False


def _transfer(file: HubFile, meta: HfFileMetadata, url: str, partial: Path, progress: bool) -> None:
    """Append the missing bytes to `partial` with a range request, then hold it to the hub's size."""
    have = partial.stat().st_size if partial.is_file() else 0
    if have > meta.size:
        partial.unlink()
        have = 0
    resuming = f", resuming at byte {have}" if have else ""
    logger.info("%s: %d bytes over HTTP%s", file.describe(), meta.size, resuming)
    # Auth stays on the hub: the file itself usually lives behind a signed CDN address.
    same_host = urlparse(meta.location).hostname == urlparse(url).hostname
    headers = build_hf_headers() if same_host else {}
    if have < meta.size:
        with open(partial, "r+b" if have else "wb") as f:
            f.seek(have)
            try:
                http_get(
                    meta.location,
                    f,
                    resume_size=have,
                    headers=headers,
                    displayed_filename=file.filename,
                    tqdm_class=_silent_bar(progress),
                )
            except Exception as err:
                raise DownloadError(
                    f"{file.describe()}: transfer interrupted at byte {f.tell()} of {meta.size} ({err}); "
                    "run the download again to resume"
                ) from err
    got = partial.stat().st_size
    if got != meta.size:
        partial.unlink()
        raise DownloadError(
            f"{file.describe()}: size mismatch: the hub announced {meta.size} bytes "
            f"(X-Linked-Size / Content-Length) but the transfer gave {got}; partial file removed"
        )


def _fetch(file: HubFile, dest: Path, endpoint: str | None, progress: bool) -> Path:
    """Download one file into `dest`, resuming a partial one.

    huggingface_hub 1.33's `hf_hub_download` deletes its partial file when a transfer fails and names
    it per process, so a killed run would start a 33 GB file from zero; hence our own partial file,
    keyed by the hub's ETag so that a new upstream version never continues an old one.
    """
    url = hf_hub_url(file.repo_id, file.filename, revision=file.revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint, retry_on_errors=True)
    except Exception as err:  # not found, unauthorised, no network: all end the run the same way
        raise HubUnreachable(f"{file.describe()}: cannot read its metadata at {url}: {err}") from err
    if meta.size is None or meta.etag is None:
        raise DownloadError(f"{file.describe()}: the hub announced no size or ETag ({url})")
    target = dest / file.filename
    if _complete(target, meta.size):
        return target
    partial = dest / PARTIAL_DIR / f"{file.filename}.{meta.etag}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    # The lock file stays: unlinking it would let a third process lock a fresh file meanwhile.
    with WeakFileLock(partial.with_suffix(".lock")):
        if _complete(target, meta.size):  # another process finished it while we waited
            return target
        if target.exists():
            logger.warning("%s: size differs from the hub's %d bytes, replacing it", target, meta.size)
        _transfer(file, meta, url, partial, progress)
        os.replace(partial, target)
    logger.info("%s: done (%d bytes)", target, meta.size)
    return target


def download(
    models: Iterable[str],
    dest: str | Path,
    progress: bool = True,
    *,
    revision: str = "main",
    endpoint: str | None = None,
    only: Collection[str] | None = None,
) -> list[Path]:
    """Fetch the chosen models (3b, 7b, 7b-sharp, all) and the shared files into the flat `dest`.

    Files already present with the hub's size are skipped, so re-running is cheap (one HEAD each).
    `endpoint` overrides `HF_ENDPOINT` (which huggingface_hub reads at import). `only` limits the transfer
    to these file names (the worker skips files it found in another folder).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # huggingface_hub prints its retry warnings with its own handler and again through the root logger
    # once an application has configured one: keep only the root's.
    logging.getLogger("huggingface_hub").handlers.clear()
    files = [f for f in hub_files(models, revision) if only is None or f.filename in only]
    try:
        return [_fetch(f, dest, endpoint, progress) for f in files]
    except HubUnreachable as err:
        raise HubUnreachable(
            f"{err}\nWhat to do: check the network and access to the hub (HF_ENDPOINT, HF_TOKEN), or copy "
            f"{', '.join(f.filename for f in files)} into {dest} by hand (SEEDVR_CKPT_DIR names that folder)"
        ) from err.__cause__
