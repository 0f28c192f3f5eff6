"""The worker's resident sequence-parallel group: one process per rank, each with the model loaded.

With `sp_size > 1` the worker process holds no model: it spawns N rank processes (rank r on cuda:r, or
on the CPU with gloo), which join a process group over loopback TCP, load the model once and wait for
jobs. Every job goes to every rank over its own pipe; the ranks run `parallel.restore_file` together
(rank 0 writes the output and sends progress) and each answers with its result or its exception. A
window that fails on one rank is raised on every rank at the end of its round, so the group answers
at once and stays resident; a failure inside a collective leaves the others waiting, and they are
killed after FAILURE_GRACE.

A separate process per rank, rather than the worker as rank 0, keeps the worker in control: a rank that
dies or hangs in a collective is killed with the rest of its group, and the worker goes on serving. A
dead rank fails the job (`RankFailure`) and the group is stopped; the next job starts a new one.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from seedvr import parallel
from seedvr.manager import ManagerConfig, ModelManager, ModelSpec
from seedvr.pipeline import Progress, RestoreOptions, RestoreResult

log = logging.getLogger("seedvr.worker")

START_TIMEOUT = 900.0  # seconds for every rank to join and load the model (7B from a slow volume)
FAILURE_GRACE = 10.0  # seconds the other ranks get to answer once one rank has failed a job
POLL = 0.2  # seconds between checks for dead ranks and the cancel flag


class RankFailure(RuntimeError):
    """A rank died, or hung after another failed: the whole group was stopped."""


@dataclass(frozen=True)
class GroupConfig:
    """What every rank process needs to load the same model on its own device."""

    manager: ManagerConfig
    spec: ModelSpec
    device_type: str  # "cuda": rank r on cuda:r (nccl); "cpu": gloo
    dtype: torch.dtype


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sendable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles (so the worker maps its type to an error code), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling problem
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _rank_main(rank: int, size: int, port: int, config: GroupConfig, conn, cancel) -> None:
    """One rank: join the group, load the model, then run jobs until the worker sends None or goes away."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank)
    )
    if config.device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    try:
        ranks = parallel.init_from_env(config.device_type)
        manager = ModelManager(config.manager, device=ranks.device, dtype=config.dtype)
        manager.ensure(config.spec)
    except Exception as exc:  # noqa: BLE001 - reported to the worker, which stops the group
        conn.send(("failed", _sendable(exc)))
        return
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the worker is gone
            break
        if job is None:
            break
        src, dst, options, kwargs = job
        progress = (lambda event: conn.send(("progress", event))) if ranks.is_main else None
        try:
            result = parallel.restore_file(
                src, dst, manager.models, options, ranks, progress=progress, should_cancel=cancel.is_set, **kwargs
            )
            conn.send(("done", result))
        except Exception as exc:  # noqa: BLE001 - the job's failure goes back to the worker
            conn.send(("failed", _sendable(exc)))
    dist.destroy_process_group()


class RankGroup:
    """N resident rank processes running one model; `restore` runs a job on all of them."""

    def __init__(self, config: GroupConfig):
        self.config = config
        self.size = config.spec.sp_size
        context = mp.get_context("spawn")  # fresh interpreters: no CUDA state or threads inherited
        self._cancel = context.Event()
        port = _free_port()
        pipes = [context.Pipe() for _ in range(self.size)]
        self._conns = [parent for parent, _ in pipes]
        self._child_conns = [child for _, child in pipes]  # closed here once the ranks hold them
        self._processes = [
            context.Process(
                target=_rank_main,
                args=(rank, self.size, port, config, child, self._cancel),
                name=f"seedvr-rank{rank}",
                daemon=True,
            )
            for rank, (_, child) in enumerate(pipes)
        ]
        self.running = False

    @property
    def spec(self) -> ModelSpec:
        return self.config.spec

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self._processes]

    def exitcodes(self) -> list[int | None]:
        """Per rank: None while it runs, else how it ended (-9: killed)."""
        return [p.exitcode if p.pid is not None and not p.is_alive() else None for p in self._processes]

    def start(self) -> float:
        """Spawn the ranks and wait until every one has loaded the model; returns the seconds it took."""
        started = time.perf_counter()
        for process in self._processes:
            process.start()
        for conn in self._child_conns:
            conn.close()
        log.info("sequence parallel: starting %d ranks on %s for %s", self.size, self.config.device_type, self.spec)
        # A rank that cannot load leaves the others waiting to join: its error ends the group at once.
        self._collect(lambda: None, deadline=time.monotonic() + START_TIMEOUT, what="loading the model", fail_fast=True)
        self.running = True
        return time.perf_counter() - started

    def restore(
        self,
        src: Path,
        dst: Path,
        options: RestoreOptions,
        *,
        progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> RestoreResult:
        """`parallel.restore_file` on every rank; rank 0 writes `dst`. Raises the first rank's exception."""
        self._check_alive()
        self._cancel.clear()
        for conn in self._conns:
            conn.send((str(src), str(dst), options, kwargs))

        def poll() -> None:
            if should_cancel is not None and should_cancel():
                self._cancel.set()

        answers = self._collect(poll, progress=progress, what="the job")
        failed = [payload for kind, payload in answers if kind == "failed"]
        if failed:  # the failing rank's own error (its type gives the error code), not the others' report of it
            raise next((exc for exc in failed if not isinstance(exc, parallel.RankError)), failed[0])
        return answers[0][1]

    def stop(self, graceful: bool = True) -> None:
        """Ask the ranks to leave (or, after a failure, kill them at once); the group cannot be used again."""
        self.running = False
        for conn, process in zip(self._conns, self._processes):
            if graceful and process.is_alive():
                try:
                    conn.send(None)
                except OSError:
                    pass
        for process in self._processes:
            if process.pid is not None:
                process.join(timeout=10 if graceful else 0)
                if process.is_alive():
                    process.kill()
                    process.join()
        for conn in self._conns:
            conn.close()

    def _check_alive(self) -> None:
        dead = [(rank, code) for rank, code in enumerate(self.exitcodes()) if code is not None]
        if not self.running or dead:
            rank, code = dead[0] if dead else (0, None)
            self.stop(graceful=False)
            raise RankFailure(
                f"sequence-parallel rank {rank} of {self.size} is gone (exit code {code}) since the last job; "
                "the rank group is restarted for the next job"
            )

    def _collect(
        self,
        poll: Callable[[], None],
        progress: Callable[[Progress], None] | None = None,
        deadline: float | None = None,
        what: str = "the job",
        fail_fast: bool = False,
    ) -> list[tuple[str, Any]]:
        """Wait for one answer per rank, forwarding progress; a dead rank, or ranks that do not answer
        within FAILURE_GRACE of another's failure (stuck in a collective), stop the group. With
        `fail_fast` the first failure stops the group and is raised."""
        answers: dict[int, tuple[str, Any]] = {}
        failed_at: float | None = None
        while len(answers) < self.size:
            waiting = {conn: rank for rank, conn in enumerate(self._conns) if rank not in answers}
            for conn in multiprocessing.connection.wait(list(waiting), timeout=POLL):
                rank = waiting[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    continue  # the process is exiting: seen as dead below
                if kind == "progress":
                    if progress is not None:
                        progress(payload)
                    continue
                answers[rank] = (kind, payload)
                if kind == "failed" and fail_fast:
                    self.stop(graceful=False)
                    raise payload
                if kind == "failed" and failed_at is None:
                    failed_at = time.monotonic()
            poll()
            missing = [rank for rank in range(self.size) if rank not in answers]
            dead = [(rank, self._processes[rank].exitcode) for rank in missing if not self._processes[rank].is_alive()]
            if dead:
                self.stop(graceful=False)
                rank, code = dead[0]
                raise RankFailure(
                    f"sequence-parallel rank {rank} of {self.size} stopped (exit code {code}) during {what}; "
                    "the rank group is restarted for the next job"
                )
            now = time.monotonic()
            if (failed_at is not None and now - failed_at > FAILURE_GRACE) or (deadline is not None and now > deadline):
                self.stop(graceful=False)
                first = next((f"rank {r} failed: {p}" for r, (k, p) in sorted(answers.items()) if k == "failed"), "")
                raise RankFailure(
                    f"sequence-parallel ranks {missing} of {self.size} did not finish {what}"
                    f"{' after ' + first if first else ' in time'}; the rank group is restarted for the next job"
                )
        return [answers[rank] for rank in range(self.size)]
