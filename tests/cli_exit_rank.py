"""One rank of tests/test_parallel_cli.py's exit test, started by torchrun: runs `seedvr.cli.main` as
`python -m seedvr` does, then prints how many references to its process group outlive `main`.

A group still referenced at interpreter exit keeps gloo's worker threads alive into finalization, where
the last tensor a thread drops needs the GIL and aborts the rank (SIGABRT) now and then; so once `main`
has destroyed the group, nothing may hold it.

usage: cli_exit_rank.py restore INPUT OUTPUT [options]
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seedvr import cli, parallel  # noqa: E402

groups = []
join = parallel.init_from_env


def join_and_record(*args, **kwargs) -> parallel.Ranks:
    ranks = join(*args, **kwargs)
    groups.append(ranks.group)
    return ranks


parallel.init_from_env = join_and_record
code = cli.main(sys.argv[1:])
gc.collect()
(group,) = groups
groups.clear()
# getrefcount counts `group` here and its own argument.
print(f"rank {os.environ['RANK']}: {sys.getrefcount(group) - 2} references to the group after main")
sys.exit(code)
