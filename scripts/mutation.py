#!/usr/bin/env python3
"""Mutation testing of the core modules with mutmut, one module at a time with a narrow test selection.

mutmut rewrites the module with small plausible bugs (a flipped comparison, an off-by-one constant, a
dropped argument) and runs the tests that reach each mutated function; a mutant that no test fails
"survives". Each module runs in its own scratch copy of the working tree, so the checkout stays
clean and modules can be run separately. Results and the judgement of every survivor:
docs/testing.md.

Examples:
  python scripts/mutation.py colorfix geometry      # a few modules
  python scripts/mutation.py --all                   # every module in MODULES (about an hour on 2 cores)
  python scripts/mutation.py temporal --keep /tmp/m  # keep the copy to inspect survivors:
      cd /tmp/m/temporal && mutmut show <mutant name>
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODULES: dict[str, tuple[str, list[str]]] = {
    "colorfix": ("seedvr/pipeline/colorfix.py", ["tests/test_pipeline_geometry.py"]),
    "geometry": ("seedvr/pipeline/geometry.py", ["tests/test_pipeline_geometry.py", "tests/test_properties.py"]),
    "temporal": (
        "seedvr/pipeline/temporal.py",
        ["tests/test_pipeline_temporal.py", "tests/test_properties.py"],
    ),
    "windows": ("seedvr/models/windows.py", ["tests/test_window_geometry.py"]),
    "schema": ("seedvr/worker/schema.py", ["tests/test_worker_units.py", "tests/test_properties.py"]),
    "media_in": ("seedvr/worker/media_in.py", ["tests/test_worker_units.py"]),
    "media": ("seedvr/media.py", ["tests/test_media.py"]),
}


def _copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a clone plus the current edits would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _cap_memory() -> None:
    """A mutant that loops forever growing a list would take the machine's memory before mutmut's
    timeout ends it; with a 6 GiB address space it fails with MemoryError instead."""
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def run_module(name: str, workdir: Path) -> int:
    module, tests = MODULES[name]
    copy = workdir / name
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    _copy_tree(copy)
    selection = "\n    ".join(["-p", "no:cacheprovider", *tests])
    (copy / "setup.cfg").write_text(
        f"[mutmut]\nsource_paths={module}\npytest_add_cli_args_test_selection=\n    {selection}\n"
        "also_copy=\n    tests\n    seedvr\n    pytest.ini\n"
    )
    # Forked test runs deadlock in torch's OpenMP pool unless it has a single thread.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "mutmut", "run", "--max-children", "1"]
    code = subprocess.run(run, cwd=copy, env=env, preexec_fn=_cap_memory).returncode
    results = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=copy, env=env, capture_output=True, text=True)
    print(f"== {name} ({module}): mutants not killed\n{results.stdout}", flush=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"modules to mutate: {', '.join(MODULES)}")
    parser.add_argument("--all", action="store_true", help="every module in MODULES")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    names = list(MODULES) if args.all else args.modules
    if not names or set(names) - set(MODULES):
        parser.error(f"name modules among {', '.join(MODULES)} or pass --all")
    if args.keep:
        return max(run_module(name, args.keep) for name in names)
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        return max(run_module(name, Path(scratch)) for name in names)


if __name__ == "__main__":
    sys.exit(main())
