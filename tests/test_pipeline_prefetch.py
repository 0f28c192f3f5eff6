"""The pipelined restore: decoding and encoding overlap the model work, and nothing else changes
(frames, bytes, errors, cancel, clean-up, no thread left behind)."""

import threading
import time
from fractions import Fraction

import pytest

from mediagen import make_video
from seedvr import media
from seedvr.pipeline import Cancelled, RestoreOptions, restore
from seedvr.pipeline.prefetch import BackgroundWriter, prefetch
from tiny import tiny_models

OPTIONS = RestoreOptions(scale=1.0, batch_frames=5, overlap_frames=1, seed=5)  # 13 frames: 3 windows


@pytest.fixture(scope="module")
def models():
    return tiny_models("3b")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("prefetch") / "in.mp4", frames=13, width=32, height=16, fps=Fraction(24))


def background_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("seedvr-")]


class Recorder:
    """Slows the decoder, the models and the encoder by sleeping, and records when each stage ran."""

    def __init__(self, monkeypatch, decode: float = 0.05, model: float = 0.2, encode: float = 0.2):
        self.intervals: dict[str, list[tuple[float, float]]] = {"decode": [], "model": [], "encode": []}
        iter_video, write, restore_window = media.iter_video, media.VideoWriter.write, restore.restore_window

        def slow_iter_video(path, chunk):
            chunks = iter_video(path, chunk)
            while True:
                with self.stage("decode", decode):
                    frames = next(chunks, None)
                if frames is None:
                    return
                yield frames

        def slow_write(writer, frames):
            with self.stage("encode", encode):
                write(writer, frames)

        def slow_restore_window(*args, **kwargs):
            with self.stage("model", model):
                return restore_window(*args, **kwargs)

        monkeypatch.setattr(restore, "READ_CHUNK", 2)
        monkeypatch.setattr(media, "iter_video", slow_iter_video)
        monkeypatch.setattr(media.VideoWriter, "write", slow_write)
        monkeypatch.setattr(restore, "restore_window", slow_restore_window)

    def stage(self, name: str, seconds: float):
        recorder = self

        class Timed:
            def __enter__(self):
                self.start = time.perf_counter()
                time.sleep(seconds)

            def __exit__(self, *exc):
                recorder.intervals[name].append((self.start, time.perf_counter()))

        return Timed()

    def overlaps(self, a: str, b: str) -> int:
        """How many pairs of an `a` interval and a `b` interval ran at the same time."""
        return sum(s1 < e2 and s2 < e1 for s1, e1 in self.intervals[a] for s2, e2 in self.intervals[b])


@pytest.mark.parametrize("pipelined", [False, True])
def test_decode_and_encode_overlap_the_models_and_the_bytes_do_not_change(models, clip, tmp_path, monkeypatch, pipelined):
    recorder = Recorder(monkeypatch)
    monkeypatch.setattr(restore, "PIPELINED", pipelined)
    result = restore.restore_file(clip, tmp_path / "out.mp4", models, OPTIONS, crf=0)
    assert result.frames == 13 and media.probe(result.path).frames == 13
    assert len(recorder.intervals["model"]) == 3 and len(recorder.intervals["encode"]) == 4  # 3 windows, the rest
    if pipelined:
        assert recorder.overlaps("decode", "model") >= 1 and recorder.overlaps("encode", "model") >= 1
        serial = tmp_path / "serial.mp4"
        monkeypatch.setattr(restore, "PIPELINED", False)
        restore.restore_file(clip, serial, models, OPTIONS, crf=0)
        assert result.path.read_bytes() == serial.read_bytes()
    else:  # one thread: no stage ever runs beside another
        assert recorder.overlaps("decode", "model") == recorder.overlaps("encode", "model") == 0
    assert background_threads() == []


@pytest.mark.parametrize("where", ["decode", "encode"])
def test_a_background_failure_is_raised_as_itself_and_the_output_removed(models, clip, tmp_path, monkeypatch, where):
    failure = media.MediaError(f"{where} broke")
    calls = []
    if where == "decode":
        iter_video = media.iter_video

        def broken(path, chunk):
            yield from iter_video(path, 8)
            raise failure

        monkeypatch.setattr(media, "iter_video", broken)
    else:
        write = media.VideoWriter.write

        def broken(writer, frames):
            calls.append(len(frames))
            if len(calls) == 2:
                raise failure
            write(writer, frames)

        monkeypatch.setattr(media.VideoWriter, "write", broken)
    dst = tmp_path / "out.mp4"
    with pytest.raises(media.MediaError) as caught:
        restore.restore_file(clip, dst, models, OPTIONS)
    assert caught.value is failure
    assert not dst.exists() and background_threads() == []


def test_cancel_stops_at_the_next_window_with_the_stages_in_threads(models, clip, tmp_path, monkeypatch):
    Recorder(monkeypatch, decode=0.02, model=0.0, encode=0.1)
    events = []
    dst = tmp_path / "out.mp4"
    with pytest.raises(Cancelled, match="window 2 of 3"):
        restore.restore_file(
            clip, dst, models, OPTIONS, progress=events.append,
            should_cancel=lambda: any(e.stage == "vae_decode" for e in events),
        )
    assert [e.window for e in events if e.stage == "encode"] == [1]
    assert not dst.exists() and background_threads() == []


def test_prefetch_stays_bounded_and_closes_its_source_when_left_early():
    made, closed = [], threading.Event()

    def numbers():
        try:
            for i in range(1000):
                made.append(i)
                yield i
        finally:
            time.sleep(0.2)  # a slow clean-up (closing a container): the caller must wait for it
            closed.set()

    with prefetch(numbers(), 2, "seedvr-test") as items:
        assert next(items) == 0
        time.sleep(0.2)
        assert len(made) <= 4  # the one taken, two queued, one waiting to be queued
    assert closed.is_set() and background_threads() == []


def test_background_writer_keeps_order_and_raises_the_sink_failure():
    written = []
    with BackgroundWriter(written.append, 1, "seedvr-test") as writer:
        for i in range(20):
            writer.put(i)
    assert written == list(range(20))

    failure = ValueError("disk full")

    def sink(item):
        if item == 3:
            raise failure
        written.append(item)

    with pytest.raises(ValueError) as caught:
        with BackgroundWriter(sink, 1, "seedvr-test") as writer:
            for i in range(50):
                writer.put(i)
    assert caught.value is failure and background_threads() == []
