"""Restored windows kept outside the run that made them: the unit of fan-out and of resume.

A window's output is kept in the form that lets any later process crossfade it exactly as one run
would: the frames it shares with a neighbouring window (``lead`` with the previous one, ``trail`` with
the next one) stay colour-fixed float32, since the crossfade blends them before quantisation; the frames
no other window covers are final and kept as uint8 (``middle``), which :func:`WindowPart.frames` turns
back into floats that quantise to the same bytes. A part file (``.npz``, numpy's zip of arrays, read
without pickle) holds one or more windows and a JSON ``meta`` that names the plan they belong to.
docs/API.md ("Window plans and parts") explains the format to clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .geometry import to_uint8_hwc
from .temporal import join_windows

FORMAT = "seedvr2-windows/1"


def from_uint8_hwc(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [-1, 1] that :func:`to_uint8_hwc` maps back exactly."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@dataclass
class WindowPart:
    """One restored window: ``[start, stop)`` of the video, split by what it shares with its neighbours."""

    index: int
    start: int
    stop: int
    lead: torch.Tensor  # float32 [l, 3, h, w]: shared with the previous window of the shot
    middle: np.ndarray  # uint8 [m, h, w, 3]: this window's alone, final
    trail: torch.Tensor  # float32 [t, 3, h, w]: shared with the next window of the shot

    @classmethod
    def of(cls, index: int, spans: Sequence[tuple[int, int]], frames: torch.Tensor) -> WindowPart:
        """Split window ``index``'s colour-fixed output ``[n, 3, h, w]`` (``spans`` from the plan)."""
        start, stop = spans[index]
        lead = max(0, spans[index - 1][1] - start) if index else 0
        trail = max(0, stop - spans[index + 1][0]) if index + 1 < len(spans) else 0
        frames = frames.float().cpu()
        middle_stop = max(lead, len(frames) - trail)
        return cls(
            index, start, stop, frames[:lead], to_uint8_hwc(frames[lead:middle_stop]).numpy(), frames[middle_stop:]
        )

    def frames(self) -> torch.Tensor:
        """The window's output as the crossfade takes it."""
        return torch.cat([self.lead, from_uint8_hwc(self.middle), self.trail])

    def arrays(self) -> dict[str, np.ndarray]:
        i = self.index
        return {f"lead_{i}": self.lead.numpy(), f"middle_{i}": self.middle, f"trail_{i}": self.trail.numpy()}


def save_parts(path: Path, parts: Iterable[WindowPart], meta: dict[str, Any]) -> Path:
    """Write ``parts`` (consumed one at a time) and ``meta`` to ``path`` atomically: a killed writer
    leaves no half file. The result is an ``.npz`` that ``numpy.load`` reads."""
    windows = []
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
        for part in parts:
            windows.append([part.index, part.start, part.stop])
            for name, array in part.arrays().items():
                _write_array(zf, name, array)
        _write_array(zf, "meta", np.array(json.dumps({**meta, "format": FORMAT, "windows": windows})))
    os.replace(tmp, path)
    return path


def _write_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(array, order="C"), allow_pickle=False)


def iter_parts(path: Path) -> Iterator[WindowPart]:
    """The windows of a part file, read one at a time."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data["meta"].item())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} part file (format {meta.get('format')!r})")
        for i, start, stop in meta["windows"]:
            lead, middle, trail = (data[f"{name}_{i}"] for name in ("lead", "middle", "trail"))
            yield WindowPart(i, start, stop, torch.from_numpy(lead), middle, torch.from_numpy(trail))


def final_frames(outputs: Iterable[tuple[int, torch.Tensor]], overlap: int) -> Iterator[np.ndarray]:
    """Window outputs ``(start, float frames)`` in order -> crossfaded, quantised uint8 ``[n, h, w, 3]`` chunks."""
    for ready in join_windows(outputs, overlap):
        yield to_uint8_hwc(ready).numpy()


def stitch(files: Iterable[Path], spans: Sequence[tuple[int, int]], overlap: int) -> Iterator[np.ndarray]:
    """The whole video, as one run would have written it, from part files holding every window of
    ``spans`` in order (a client's fan-out). Holds one window at a time."""

    def windows() -> Iterator[tuple[int, torch.Tensor]]:
        expected = 0
        for path in files:
            for part in iter_parts(path):
                if part.index != expected or (part.start, part.stop) != tuple(spans[part.index]):
                    raise ValueError(
                        f"{path}: window {part.index} [{part.start}, {part.stop}) where the plan has window "
                        f"{expected} {list(spans[expected]) if expected < len(spans) else '(none)'}"
                    )
                expected += 1
                yield part.start, part.frames()
        if expected != len(spans):
            raise ValueError(f"the parts hold {expected} windows, the plan {len(spans)}")

    return final_frames(windows(), overlap)


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class WindowStore:
    """A resume folder: one part file per finished window (or per fanned-out range, ``part-*.npz``), and a
    manifest naming the run they belong to.

    The manifest's key is the input file's hash, the settings and the plan (and whatever the caller
    adds, such as the model); when it differs from the run at hand, the folder's window files are
    deleted before anything is written, so a stale window is never reused.
    """

    MANIFEST = "manifest.json"

    def __init__(self, folder: str | Path, identity: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.identity = identity or {}
        self.reused = 0

    def bind(self, key: dict[str, Any]) -> None:
        """Make the folder belong to the run ``key`` (+ the caller's identity)."""
        key = json.loads(json.dumps({**self.identity, **key}))  # as the manifest reads back (tuples are lists)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / self.MANIFEST
        try:
            current = json.loads(manifest.read_text())
        except (OSError, ValueError):
            current = None
        if current != key:
            for pattern in ("window-*.npz", "part-*.npz"):
                for stale in self.folder.glob(pattern):
                    stale.unlink()
            tmp = manifest.with_name(manifest.name + ".tmp")
            tmp.write_text(json.dumps(key, indent=1, sort_keys=True))
            os.replace(tmp, manifest)

    def path(self, index: int) -> Path:
        return self.folder / f"window-{index:06d}.npz"

    def get(self, index: int) -> WindowPart | None:
        path = self.path(index)
        if not path.exists():
            return None
        (part,) = iter_parts(path)
        self.reused += 1
        return part

    def put(self, part: WindowPart) -> None:
        save_parts(self.path(part.index), [part], {})
