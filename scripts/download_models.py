#!/usr/bin/env python3
"""Download SeedVR2 checkpoints from the Hugging Face hub into the flat checkpoint folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from seedvr.checkpoints import (  # noqa: E402
    CHECKPOINT_FILES,
    HUB_REPOS,
    MODEL_CHOICES,
    SHARED_FILES,
    DownloadError,
    default_ckpt_dir,
    download,
)

EPILOG = f"""
files (fp32 unless noted; sizes of the current hub revision):
  --model 3b        {CHECKPOINT_FILES['seedvr2_3b']:<26} 13.6 GB  from {HUB_REPOS['seedvr2_3b']}
  --model 7b        {CHECKPOINT_FILES['seedvr2_7b']:<26} 33.0 GB  from {HUB_REPOS['seedvr2_7b']}
  --model 7b-sharp  {CHECKPOINT_FILES['seedvr2_7b_sharp']:<26} 33.0 GB  from {HUB_REPOS['seedvr2_7b_sharp']}
  --model all       the three above, 79.5 GB
  always            {', '.join(CHECKPOINT_FILES[n] for n in SHARED_FILES)} (1.0 GB; one VAE and the bf16
                    text embeddings, shared by every model, stored once) from {HUB_REPOS['vae']}

All files land side by side in --dir. An interrupted download resumes where it stopped when run
again (partial files live in DIR/.incomplete/); a file already present with the hub's size is
skipped, so re-running is cheap. Every file is checked against the size the hub announces.

environment:
  SEEDVR_CKPT_DIR   default for --dir (the worker reads its checkpoints from there too)
  HF_TOKEN          optional hub token (higher rate limits)
  HF_ENDPOINT       hub mirror to use instead of https://huggingface.co

example (a RunPod network volume, mounted at /workspace in a pod, /runpod-volume in serverless):
  python scripts/download_models.py --model 3b 7b-sharp --dir /workspace/ckpts
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        nargs="+",
        required=True,
        choices=list(MODEL_CHOICES),
        help="which model(s) to fetch; the VAE and text embeddings come with any of them",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=default_ckpt_dir(),
        help="flat checkpoint folder (default: $SEEDVR_CKPT_DIR or ./ckpts; now %(default)s)",
    )
    parser.add_argument(
        "--revision", default="main", help="hub branch or tag, for every repository (default: main)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    try:
        paths = download(args.model, args.dir, progress=not args.no_progress, revision=args.revision)
    except (DownloadError, OSError) as err:
        logging.error("%s", err)
        return 1
    logging.info("ready in %s: %s", args.dir, ", ".join(p.name for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
