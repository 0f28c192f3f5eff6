"""scripts/download_models.py and seedvr.checkpoints.download against a local fake of the hub."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakehub import FakeHub
from seedvr.checkpoints import REPO_3B, REPO_7B, DownloadError, download

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "download_models.py"
SHARED = {"ema_vae.pth", "pos_emb.pt", "neg_emb.pt"}


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _repos(vae_size: int = 3000) -> dict[str, dict[str, bytes]]:
    shared = {"ema_vae.pth": _blob(1, vae_size), "pos_emb.pt": _blob(2, 590), "neg_emb.pt": _blob(3, 650)}
    return {
        REPO_3B: {"seedvr2_ema_3b.pth": _blob(4, 5000), **shared},
        # The 7B repository also holds a VAE; the download must still store only one.
        REPO_7B: {"seedvr2_ema_7b.pth": _blob(5, 7000), "seedvr2_ema_7b_sharp.pth": _blob(6, 7100), **shared},
    }


def _env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "SEEDVR_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,  # read by huggingface_hub at import: hence a fresh process
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DOWNLOAD_TIMEOUT="60",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def _run(hub: FakeHub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args, "--no-progress"]
    return subprocess.run(cmd, env=_env(hub, tmp_path), capture_output=True, text=True, timeout=120)


def _listing(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}


def _expected(repos, names) -> dict[str, bytes]:
    merged = {**repos[REPO_7B], **repos[REPO_3B]}
    return {n: merged[n] for n in names}


def test_help_documents_models_folder_and_environment(tmp_path):
    with FakeHub({}) as hub:
        out = subprocess.run(
            [sys.executable, str(SCRIPT), "--help"], env=_env(hub, tmp_path), capture_output=True, text=True
        )
    assert out.returncode == 0, out.stderr
    words = ("3b", "7b-sharp", "all", "--dir", "SEEDVR_CKPT_DIR", "HF_ENDPOINT", "resumes", "ema_vae.pth")
    for word in words:
        assert word in out.stdout, word


def test_script_downloads_3b_into_flat_folder(tmp_path):
    repos, dest = _repos(), tmp_path / "ckpts"
    with FakeHub(repos) as hub:
        out = _run(hub, tmp_path, "--model", "3b", "--dir", str(dest))
    assert out.returncode == 0, out.stderr
    assert _listing(dest) == _expected(repos, ["seedvr2_ema_3b.pth", *SHARED])


@pytest.mark.slow
def test_script_all_stores_the_vae_once_and_rerun_is_a_noop(tmp_path):
    repos, dest = _repos(), tmp_path / "ckpts"
    with FakeHub(repos) as hub:
        first = _run(hub, tmp_path, "--model", "all", "--dir", str(dest))
        assert first.returncode == 0, first.stderr
        files = _listing(dest)
        models = ["seedvr2_ema_3b.pth", "seedvr2_ema_7b.pth", "seedvr2_ema_7b_sharp.pth"]
        assert files == _expected(repos, [*models, *SHARED])
        assert len(hub.ranges("ema_vae.pth")) == 1
        assert f"/{REPO_7B}/resolve/main/ema_vae.pth" not in {r.path for r in hub.requests}

        mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir() if p.is_file()}
        hub.requests.clear()
        again = _run(hub, tmp_path, "--model", "all", "--dir", str(dest))
        assert again.returncode == 0, again.stderr
        assert hub.gets() == []  # only HEADs: every file was already there with the hub's size
        assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir() if p.is_file()} == mtimes


def test_dir_defaults_to_seedvr_ckpt_dir(tmp_path):
    repos, dest = _repos(), tmp_path / "volume" / "ckpts"
    with FakeHub(repos) as hub:
        env = {**_env(hub, tmp_path), "SEEDVR_CKPT_DIR": str(dest)}
        cmd = [sys.executable, str(SCRIPT), "--model", "3b", "--no-progress"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert set(_listing(dest)) == {"seedvr2_ema_3b.pth", *SHARED}


def test_download_7b_sharp_takes_shared_files_from_the_3b_repo(tmp_path):
    repos = _repos()
    with FakeHub(repos) as hub:
        paths = download(["7b-sharp"], tmp_path, progress=False, endpoint=hub.endpoint)
        heads = [r.path for r in hub.requests if r.method == "HEAD"]
    assert [p.name for p in paths] == ["seedvr2_ema_7b_sharp.pth", "ema_vae.pth", "pos_emb.pt", "neg_emb.pt"]
    assert _listing(tmp_path) == _expected(repos, ["seedvr2_ema_7b_sharp.pth", *SHARED])
    assert f"/{REPO_3B}/resolve/main/ema_vae.pth" in heads
    assert not any(h.startswith(f"/{REPO_7B}/resolve/main/ema_vae") for h in heads)


def test_size_that_disagrees_with_the_hub_is_a_clear_error(tmp_path):
    repos, dest = _repos(), tmp_path / "ckpts"
    with FakeHub(repos, advertise_size={"ema_vae.pth": 3007}) as hub:
        out = _run(hub, tmp_path, "--model", "3b", "--dir", str(dest))
    assert out.returncode == 1
    assert "ema_vae.pth" in out.stderr and "size mismatch" in out.stderr
    assert "3007" in out.stderr and "3000" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (dest / "ema_vae.pth").exists()
    assert not list((dest / ".incomplete").glob("ema_vae.pth.*.part"))


def test_missing_hub_file_names_the_file(tmp_path):
    repos = _repos()
    del repos[REPO_3B]["neg_emb.pt"]
    with FakeHub(repos) as hub:
        with pytest.raises(DownloadError, match=r"neg_emb\.pt from ByteDance-Seed/SeedVR2-3B@main: cannot"):
            download(["3b"], tmp_path, progress=False, endpoint=hub.endpoint)


def test_unknown_model_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown model '13b': choose from 3b, 7b, 7b-sharp, all"):
        download(["13b"], tmp_path)


def _partial(dest: Path, name: str) -> Path | None:
    parts = list((dest / ".incomplete").glob(f"{name}.*.part")) if (dest / ".incomplete").is_dir() else []
    return parts[0] if parts else None


def _wait_for_partial(dest: Path, name: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (part := _partial(dest, name)) and part.stat().st_size > 0:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no partial {name} after {timeout} s")


@pytest.mark.slow
def test_killed_download_resumes_with_a_range_request(tmp_path):
    # huggingface_hub writes in 10 MiB chunks: the file must be larger for a chunk to reach the disk.
    repos, dest = _repos(vae_size=24 * 2**20), tmp_path / "ckpts"
    vae = repos[REPO_3B]["ema_vae.pth"]
    with FakeHub(repos, stall_after={"ema_vae.pth": 15 * 2**20}) as hub:
        cmd = [sys.executable, str(SCRIPT), "--model", "3b", "--dir", str(dest), "--no-progress"]
        proc = subprocess.Popen(cmd, env=_env(hub, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for_partial(dest, "ema_vae.pth", proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        have = _partial(dest, "ema_vae.pth").stat().st_size  # measured once the writer is dead
        assert 0 < have < len(vae) and not (dest / "ema_vae.pth").exists()

        hub.stall_after.clear()
        out = _run(hub, tmp_path, "--model", "3b", "--dir", str(dest))
        assert out.returncode == 0, out.stderr
        assert hub.ranges("ema_vae.pth") == [None, f"bytes={have}-"]
        assert hub.ranges("seedvr2_ema_3b.pth") == [None]  # finished before the kill: not fetched again
    assert (dest / "ema_vae.pth").read_bytes() == vae
    assert not list((dest / ".incomplete").glob("*.part"))
