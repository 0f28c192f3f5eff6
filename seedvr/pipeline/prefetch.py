"""Keep the models busy: decode ahead of them and encode behind them in background threads.

`prefetch` runs a source iterator (the PyAV decoder) in a thread, at most `depth` items ahead;
`BackgroundWriter` hands items to a sink (the x264 encoder) in a thread, at most `depth` waiting.
Both queues are bounded, so memory stays a few chunks. A failure in the background thread is raised
in the caller's thread as the same exception object, and no thread outlives its `with` block: leaving
it early (an error, a cancel) stops the thread and joins it. `depth=0` does everything in the
caller's thread, one stage after the other (the reference the pipelined run must equal).

`to_device` / `to_host` are the host copies around the GPU work: through pinned memory, so that a
copy to the GPU does not block the host thread and a copy back runs at full bandwidth.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import numpy as np
import torch

Item = TypeVar("Item")

POLL = 0.05  # seconds a blocked queue operation waits before it looks at the other side again


class _Thread:
    """One daemon thread beside the caller, a bounded queue between them, and a stop flag."""

    def __init__(self, depth: int, name: str):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _put(self, message: tuple, alive: Callable[[], bool]) -> bool:
        """Queue `message` unless stopped or the other side is gone (then False)."""
        while not self._stop.is_set() and alive():
            try:
                self._queue.put(message, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _stop_and_join(self) -> None:
        """Stop the thread, drop what it queued, and wait for it (it ends its current item first)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=POLL)
            except queue.Empty:
                pass
        self._thread.join()


class _Prefetch(_Thread, Generic[Item]):
    def __init__(self, source: Iterable[Item], depth: int, name: str):
        super().__init__(depth, name)
        self._source = iter(source)
        self._done = False
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(("item", item), lambda: True):
                    return
            self._put(("end", None), lambda: True)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._put(("error", exc), lambda: True)
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:  # a generator: its `with` blocks (the open container) end here
                close()

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration


@contextmanager
def prefetch(source: Iterable[Item], depth: int, name: str = "seedvr-prefetch") -> Iterator[Iterator[Item]]:
    """`source`'s items, produced in a background thread up to `depth` items ahead of the caller."""
    if depth == 0:
        iterator = iter(source)
        try:
            yield iterator
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return
    items = _Prefetch(source, depth, name)
    try:
        yield items
    finally:
        items._stop_and_join()


class BackgroundWriter(_Thread, Generic[Item]):
    """Calls `sink(item)` for every `put(item)`, in order, in a background thread.

    A context manager: leaving the block normally waits until every item is written and raises the
    sink's failure, if any; leaving it with an exception drops what is still queued.
    """

    def __init__(self, sink: Callable[[Item], None], depth: int, name: str = "seedvr-writer"):
        super().__init__(max(depth, 1), name)
        self._sink = sink
        self._inline = depth == 0
        self._error: BaseException | None = None

    def __enter__(self) -> BackgroundWriter[Item]:
        if not self._inline:
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._inline:
            return
        if exc_type is not None:
            self._stop_and_join()
            return
        self._put(("end", None), self._thread.is_alive)
        self._thread.join()
        self._raise_failure()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._queue.get(timeout=POLL)
            except queue.Empty:
                continue
            if kind == "end":
                return
            try:
                self._sink(item)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self._error = exc
                return

    def put(self, item: Item) -> None:
        """Queue `item` (waiting while the queue is full); raises the sink's failure once it has one."""
        if self._inline:
            self._sink(item)
            return
        self._raise_failure()
        if not self._put(("item", item), self._thread.is_alive):
            self._raise_failure()
            raise RuntimeError(f"{self._thread.name} stopped")

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error


def to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array as a tensor on `device`; to a GPU from pinned memory, without blocking the host."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the CPU; from a GPU into pinned memory, complete when this returns."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host
