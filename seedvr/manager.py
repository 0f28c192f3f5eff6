"""The resident model: configs + checkpoints -> RestorationModels, kept loaded between jobs.

One DiT is resident at a time (3B and 7B never both fit next to activations on one GPU); swapping frees the
old weights before reading the new ones, so peak memory is one model. The VAE is the same file for every
model, so a swap keeps it. Models are built on the meta device and filled straight from memory-mapped
checkpoints in the target dtype: no random init, no second copy of the weights.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from seedvr import checkpoints
from seedvr.models import build_dit
from seedvr.models.vae import build_vae
from seedvr.pipeline import RestorationModels

log = logging.getLogger("seedvr.manager")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_FOLDERS = {"seedvr2_3b": "configs_3b", "seedvr2_7b": "configs_7b"}
DEFAULT_MODEL = "seedvr2_3b"


class ModelNotReady(RuntimeError):
    """A checkpoint is missing or unusable; the message names the file and how to fetch it."""


@dataclass(frozen=True)
class ModelSpec:
    """What a client asks for; equal specs mean "nothing to load"."""

    model_type: str = DEFAULT_MODEL
    variant: str = "normal"
    sp_size: int = 1


@dataclass(frozen=True)
class ManagerConfig:
    ckpt_dir: Path = Path("ckpts")
    config_dir: Path = PROJECT_ROOT
    default_model: str = DEFAULT_MODEL
    default_variant: str = "normal"
    download_models: tuple[str, ...] = ()
    model_cache: Path | None = None  # a Hugging Face hub cache searched before ckpt_dir (RunPod's cached models)

    @classmethod
    def from_env(cls) -> "ManagerConfig":
        default_model = os.environ.get("SEEDVR_MODEL") or DEFAULT_MODEL
        if default_model not in MODEL_FOLDERS:
            raise ValueError(f"SEEDVR_MODEL must be one of {', '.join(MODEL_FOLDERS)}, got {default_model!r}")
        default_variant = os.environ.get("SEEDVR_VARIANT") or "normal"
        if default_variant not in ("normal", "sharp") or (default_variant == "sharp" and default_model != "seedvr2_7b"):
            raise ValueError(
                f"SEEDVR_VARIANT must be normal, or sharp with SEEDVR_MODEL=seedvr2_7b; got {default_variant!r} "
                f"with SEEDVR_MODEL={default_model}"
            )
        download = tuple(os.environ.get("SEEDVR_DOWNLOAD_MODELS", "").replace(",", " ").split())
        unknown = [model for model in download if model not in checkpoints.MODEL_CHOICES]
        if unknown:
            choices = ", ".join(checkpoints.MODEL_CHOICES)
            raise ValueError(f"SEEDVR_DOWNLOAD_MODELS takes {choices} (separated by spaces), got {unknown[0]!r}")
        return cls(
            ckpt_dir=Path(os.environ.get("SEEDVR_CKPT_DIR") or "ckpts"),
            config_dir=Path(os.environ.get("SEEDVR_CONFIG_DIR") or PROJECT_ROOT),
            default_model=default_model,
            default_variant=default_variant,
            download_models=download,
            model_cache=Path(os.environ.get("SEEDVR_MODEL_CACHE") or checkpoints.RUNPOD_MODEL_CACHE),
        )


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 is what the released weights were trained and run in; CPUs get fp32, where bf16 is slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class ModelManager:
    def __init__(self, config: ManagerConfig, device: torch.device | None = None, dtype: torch.dtype | None = None):
        self.config = config
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.resident: ModelSpec | None = None
        self.models: RestorationModels | None = None
        self._vae: torch.nn.Module | None = None
        self._vae_key: tuple[str, str] | None = None
        self._configs: dict[str, dict[str, Any]] = {}
        self.folders = self._weight_folders()

    def _weight_folders(self) -> tuple[Path, ...]:
        """Where checkpoint files are looked for, in order: the snapshots of RunPod's cached model (read in place),
        then SEEDVR_CKPT_DIR, where the start-up download also writes."""
        cache = self.config.model_cache
        repos = dict.fromkeys([checkpoints.HUB_REPOS[self.config.default_model], *checkpoints.HUB_REPOS.values()])
        snapshots = [s for repo in repos if cache is not None and (s := checkpoints.cached_snapshot(cache, repo))]
        for snapshot in snapshots:
            log.info("weights: RunPod cached model at %s, read in place (no download, no copy)", snapshot)
        if cache is not None and not snapshots:
            log.info("weights: no cached model under %s; reading %s", cache, self.config.ckpt_dir)
        return (*snapshots, self.config.ckpt_dir)

    def locate(self, filename: str) -> Path:
        """Where `filename` is, or where it belongs (SEEDVR_CKPT_DIR) when no folder has it."""
        return checkpoints.locate(filename, self.folders) or self.config.ckpt_dir / filename

    # ------------------------------------------------------------------ what exists

    def model_config(self, model_type: str) -> dict[str, Any]:
        if model_type not in self._configs:
            path = self.config.config_dir / MODEL_FOLDERS[model_type] / "main.yaml"
            with open(path) as f:
                self._configs[model_type] = yaml.safe_load(f)
        return self._configs[model_type]

    def variants(self, model_type: str) -> tuple[str, ...]:
        """The variants a model has checkpoints for in its config (`sharp` exists for 7B only)."""
        return tuple(self.model_config(model_type)["dit"]["checkpoints"])

    def default_variant(self, model_type: str) -> str:
        """SEEDVR_VARIANT applies to SEEDVR_MODEL only: another model starts from its normal variant."""
        return self.config.default_variant if model_type == self.config.default_model else "normal"

    def checkpoint_status(self) -> dict[str, bool]:
        return checkpoints.checkpoint_status(self.folders)

    @staticmethod
    def dit_name(spec: ModelSpec) -> str:
        """The DiT's name in seedvr.checkpoints.CHECKPOINT_FILES (seedvr2_7b_sharp for the sharp 7B)."""
        return spec.model_type if spec.variant == "normal" else f"{spec.model_type}_{spec.variant}"

    def files(self, spec: ModelSpec) -> dict[str, Path]:
        """The files `spec` needs, keyed by their names in seedvr.checkpoints.CHECKPOINT_FILES."""
        cfg = self.model_config(spec.model_type)
        names = {
            self.dit_name(spec): cfg["dit"]["checkpoints"][spec.variant],
            "vae": cfg["vae"]["checkpoint"],
            "pos_emb": cfg["text"]["positive"],
            "neg_emb": cfg["text"]["negative"],
        }
        return {name: self.locate(file) for name, file in names.items()}

    def check_files(self, spec: ModelSpec) -> None:
        """Refuse before any download or GPU work when a file of `spec` is absent."""
        for name, path in self.files(spec).items():
            if not path.is_file():
                # The download hint holds for the official file names; a config may name other files.
                official = checkpoints.CHECKPOINT_FILES.get(name) == path.name
                detail = (
                    checkpoints.missing_checkpoint_message(name, self.config.ckpt_dir)
                    if official
                    else f"checkpoint {path} not found"
                )
                raise ModelNotReady(f"Model not initialized: {detail}")

    def download_missing(self) -> None:
        """Fetch the files of SEEDVR_DOWNLOAD_MODELS (3b, 7b, 7b-sharp, all) that are not in the folder yet.

        For endpoints without baked weights: run at worker start; into a network volume it happens once.
        """
        missing = self.missing_downloads()
        if missing:
            log.info("downloading %s into %s", ", ".join(missing), self.config.ckpt_dir)
            checkpoints.download(self.config.download_models, self.config.ckpt_dir, progress=False, only=missing)

    def missing_downloads(self) -> list[str]:
        """The files of SEEDVR_DOWNLOAD_MODELS that no folder holds yet."""
        wanted = checkpoints.hub_files(self.config.download_models) if self.config.download_models else []
        return [f.filename for f in wanted if not self.locate(f.filename).is_file()]

    # ------------------------------------------------------------------ load / free

    def ensure(self, spec: ModelSpec) -> float:
        """Make `spec` the resident model; returns the seconds spent loading (0.0 when it already was)."""
        if spec == self.resident and self.models is not None:
            return 0.0
        self.check_files(spec)
        start = time.perf_counter()
        self.unload(keep_vae=True)
        try:
            self.models = self._load(spec)
        except Exception:
            self.unload()
            raise
        self.resident = spec
        seconds = time.perf_counter() - start
        log.info(
            "loaded %s (%s) on %s in %s in %.1f s", spec.model_type, spec.variant, self.device, self.dtype, seconds
        )
        return seconds

    def unload(self, keep_vae: bool = False) -> None:
        """Drop the resident DiT (and the VAE unless kept) and give the memory back to the device."""
        self.models = None
        self.resident = None
        if not keep_vae:
            self._vae = None
            self._vae_key = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(self, spec: ModelSpec) -> RestorationModels:
        cfg = self.model_config(spec.model_type)
        files = self.files(spec)
        vae = self._shared_vae(cfg["vae"], files["vae"])
        with torch.device("meta"):
            dit = build_dit(cfg["dit"]["arch"], cfg["dit"]["model"])
        checkpoints.load_weights(dit, files[self.dit_name(spec)], self.dtype, self.device)
        dit.eval().requires_grad_(False)
        return RestorationModels(
            dit=dit,
            vae=vae,
            text_emb=checkpoints.load_text_embedding(files["pos_emb"], self.dtype, self.device),
            text_neg_emb=checkpoints.load_text_embedding(files["neg_emb"], self.dtype, self.device),
            scaling_factor=float(cfg["vae"]["scaling_factor"]),
            device=self.device,
            dtype=self.dtype,
        )

    def _shared_vae(self, vae_cfg: dict[str, Any], path: Path) -> torch.nn.Module:
        """The VAE is keyed by its file and architecture, so 3B <-> 7B swaps reuse it."""
        key = (str(path.resolve()), json.dumps(vae_cfg["model"], sort_keys=True))
        if self._vae_key != key:
            self._vae = None
            gc.collect()
            with torch.device("meta"):
                vae = build_vae(vae_cfg["model"])
            checkpoints.load_weights(vae, path, self.dtype, self.device)
            self._vae = vae.eval().requires_grad_(False)
            self._vae_key = key
            log.info("loaded VAE %s", path)
        return self._vae
