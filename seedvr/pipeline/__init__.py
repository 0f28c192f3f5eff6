"""Frames in, frames out: the SeedVR2 one-step restoration around the DiT and the VAE.

`restore_reference` is the official path (for equality tests); `restore_file` is what the worker
and the CLI call (streaming, temporal windows, padding instead of cropping, colour fix).
"""

from .colorfix import COLOR_FIXES
from .reference import restore_reference
from .restore import (
    Cancelled,
    OutsidePlan,
    Plan,
    Progress,
    RestorationModels,
    RestoreOptions,
    RestoreResult,
    make_plan,
    restore_file,
    restore_frames,
)

__all__ = [
    "COLOR_FIXES",
    "Cancelled",
    "OutsidePlan",
    "Plan",
    "Progress",
    "RestorationModels",
    "RestoreOptions",
    "RestoreResult",
    "make_plan",
    "restore_file",
    "restore_frames",
    "restore_reference",
]
