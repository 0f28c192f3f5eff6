"""scripts/gpu_check.py --smoke: the GPU check's whole code path on the CPU, without the media and
worker stack (the lent GPU machine has no PyAV, runpod or pydantic)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("av", "runpod", "pydantic", "huggingface_hub", "boto3", "requests", "fastapi")

# Runs a script as __main__ with the packages the GPU machine lacks made unimportable.
WITHOUT_MEDIA_STACK = textwrap.dedent(
    f"""
    import builtins, runpy, sys
    absent, real_import = {ABSENT!r}, builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in absent:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return real_import(name, *args, **kwargs)

    builtins.__import__ = guarded
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def _without_media_stack(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MEDIA_STACK, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_model_level_modules_import_without_the_media_stack(tmp_path: Path) -> None:
    script = tmp_path / "imports.py"
    script.write_text(
        "import sys\nsys.path[:0] = ['.', 'scripts']\n"
        "import seedvr.pipeline.restore, seedvr.models.compiled, seedvr.checkpoints, bench\n"
    )
    done = _without_media_stack(str(script))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow  # three tiny cases, one compiled: dynamo traces every kind of block (minutes on 2 cores)
def test_smoke_runs_end_to_end(tmp_path: Path) -> None:
    done = _without_media_stack("scripts/gpu_check.py", "--smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    results = report["results"]
    assert [r["case"]["compile"] for r in results] == [False, False, True]
    assert all(r["skipped"] is None and r["fps"] > 0 and r["seconds"]["dit"] > 0 for r in results)
    assert any("PyAV" in note for note in report["skipped"])
    assert set(report["environment"]["installed"]) == {"av", "runpod", "pydantic", "flash_attn"}
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| tiny |") == 3
