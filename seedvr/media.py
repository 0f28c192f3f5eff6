"""Files <-> frames: decode videos and images to RGB uint8, encode them back, keep fps and audio.

PyAV only (its wheel bundles ffmpeg; no system ffmpeg). The kind of an input is decided from its
bytes by ffmpeg's demuxer probing, with the file name hidden, so a misnamed upload still decodes as
what it is. Decoding and encoding stream frame chunks, so memory stays flat in the clip length.
docs/media.md lists what is preserved (fps, frame count, audio, colours) and what is not.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

log = logging.getLogger(__name__)

DECODE_FAILED = "could not decode the input as a video or an image"

VIDEO_FORMATS = ("mp4", "webm", "mov")
IMAGE_FORMATS = ("png", "jpg", "webp")

_UNSPECIFIED = 2  # AVCOL_SPC_UNSPECIFIED
_BT709 = 1  # AVCOL_SPC / PRI / TRC value for BT.709
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


class MediaError(Exception):
    """A file could not be decoded or encoded; the message is meant for the user."""


class MediaTooLarge(MediaError):
    """The picture has more pixels than the caller allows; found before any frame of it was decoded."""

    def __init__(self, width: int, height: int, limit: int):
        self.width, self.height, self.limit = width, height, limit
        super().__init__(f"the picture is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,}")


@dataclass(frozen=True)
class MediaInfo:
    kind: str  # "video" or "image"
    width: int  # as displayed, i.e. after rotation
    height: int
    frames: int  # 1 for an image
    fps: Fraction | None  # None for an image
    has_audio: bool
    container: str  # the demuxer that recognised the bytes, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "png_pipe"
    codec: str  # video/image codec, e.g. "h264", "png"
    duration: float | None  # seconds, None for an image
    rotation: int  # degrees counter-clockwise applied to every decoded frame (0, 90, 180, 270)


# --- decoding ---------------------------------------------------------------------------------


class _Unnamed:
    """A read-only file object without a name: ffmpeg then picks the demuxer from the bytes alone
    (given a name, it would also score formats by the extension)."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


@contextmanager
def _open_input(path: str | Path, max_pixels: int | None = None) -> Iterator[av.container.InputContainer]:
    """Open a file for demuxing; any failure inside the block becomes a MediaError.

    Opening decodes a first picture when the container does not state the size (image files): `max_pixels`
    makes ffmpeg refuse a bigger one there, instead of allocating it."""
    options = {"max_pixels": str(max_pixels)} if max_pixels else None
    try:
        with open(path, "rb") as raw, av.open(_Unnamed(raw), "r", options=options) as container:
            yield container
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{DECODE_FAILED}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _video_stream(
    container: av.container.InputContainer, path: str | Path, max_pixels: int | None = None
) -> av.VideoStream:
    """The first picture stream, set up for decoding (of pictures up to `max_pixels`, when given)."""
    name = container.format.name
    if not container.streams.video:
        raise MediaError(f"{DECODE_FAILED}: no video or image stream (format {name})")
    if name == "webp_pipe" and _is_animated_webp(path):
        raise MediaError(f"{DECODE_FAILED}: animated WebP is not supported by the bundled ffmpeg")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    options = {"max_pixels": str(max_pixels)} if max_pixels else {}
    if name == "jpeg_pipe":
        # the JPEG decoder conceals a cut file (the missing part comes out grey); the others fail
        options["err_detect"] = "explode"
    if options:
        stream.codec_context.options = options
    return stream


def _header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, WebP or BMP file, or None.

    Image files have no container around them, so ffmpeg learns their size only by decoding; this reads it
    from the file's own header, so an oversized picture is named before anything is decoded."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head.startswith(b"BM") and len(head) >= 26:
            width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)
        if head.startswith(b"\xff\xd8"):
            f.seek(2)
            return _jpeg_size(f)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15, not DHT/JPG/DAC


def _jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
    """Walk the JPEG segments up to the frame header (SOFn), which holds the size."""
    while (marker := f.read(2)) and len(marker) == 2 and marker[0] == 0xFF:
        length = f.read(2)
        if len(length) < 2:
            return None
        if marker[1] in _JPEG_FRAME_MARKERS:
            header = f.read(5)
            return (struct.unpack(">H", header[3:5])[0], struct.unpack(">H", header[1:3])[0]) if len(header) == 5 else None
        f.seek(struct.unpack(">H", length)[0] - 2, 1)
    return None


def _check_pixels(stream: av.VideoStream, path: str | Path, max_pixels: int) -> None:
    """Refuse a picture over `max_pixels` from its declared size: the container's, else the file header's."""
    context = stream.codec_context
    size = (context.width, context.height) if context.width and context.height else _header_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        raise MediaTooLarge(size[0], size[1], max_pixels)


def _count_frames(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Frames the decoder will output, counted from the packets in one demuxing pass without
    decoding (mkv and webm store no count, avi counts empty placeholder chunks, and mp4/mov edit
    lists mark packets to decode but not show). Fewer packets than mp4/mov declare means the file
    was cut short, which would otherwise silently shorten the output."""
    packets = shown = 0
    for packet in container.demux(stream):
        if packet.size:
            packets += 1
            shown += not packet.is_discard
    container.seek(0)
    declared = stream.frames if container.format.name.startswith("mov,") else 0
    if packets < declared:
        raise MediaError(f"{DECODE_FAILED}: the file is truncated ({packets} of {declared} frames present)")
    return shown


def _is_animated_webp(path: str | Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(21)
    return len(head) == 21 and head[12:16] == b"VP8X" and bool(head[20] & 0x02)


def _classify(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[str, int]:
    """("video" | "image", frame count). Image demuxers ("*_pipe") give images; gif and apng are
    images when they hold one frame and videos otherwise; everything else is a video."""
    name = container.format.name
    if name.endswith("_pipe"):
        return "image", 1
    frames = _count_frames(container, stream)
    if name in ("gif", "apng") and frames <= 1:
        return "image", 1
    return "video", frames


def _frame_rate(stream: av.VideoStream) -> Fraction:
    """The stream's average rate, cleaned of timestamp rounding (29.97002997... -> 30000/1001)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise MediaError(f"{DECODE_FAILED}: the video has no frame rate")
    return Fraction(rate).limit_denominator(1001)


def _rotation(frame: av.VideoFrame) -> int:
    return round(frame.rotation / 90) % 4 * 90


def _matrix(frame: av.VideoFrame) -> str | None:
    """YUV->RGB matrix for untagged video, guessed as players do (BT.709 for HD, else BT.601);
    None keeps the frame's own tag, which image decoders always set."""
    if frame.colorspace != _UNSPECIFIED or frame.format.is_rgb:
        return None
    return "ITU709" if frame.height >= 720 or frame.width >= 1280 else "ITU601"


def _has_alpha(fmt: av.VideoFormat) -> bool:
    return fmt.has_palette or any(c.is_alpha for c in fmt.components)


def _to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """uint8 [H,W,3] in display orientation. Transparency is composited over white, so transparent
    parts of logos and stickers stay visible instead of turning into whatever colour they hide.
    `width`/`height` (coded, before rotation) keep every frame of a clip the same size."""
    convert = dict(width=width, height=height, src_colorspace=_matrix(frame))
    if _has_alpha(frame.format):
        rgba = frame.to_ndarray(format="rgba", **convert).astype(np.uint16)
        alpha = rgba[..., 3:]
        rgb = ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    else:
        rgb = frame.to_ndarray(format="rgb24", **convert)
    turns = _rotation(frame) // 90
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _first_frame(container: av.container.InputContainer, stream: av.VideoStream) -> av.VideoFrame:
    for frame in container.decode(stream):
        return frame
    raise MediaError(f"{DECODE_FAILED}: no frame could be decoded")


def detect_kind(path: str | Path) -> str:
    """"video" or "image", from the bytes (the file name is ignored); same checks as `probe`."""
    return probe(path).kind


def probe(path: str | Path, max_pixels: int | None = None) -> MediaInfo:
    """What the file is, without decoding more than its first frame (which proves it decodes and
    carries the rotation). Frame counting may demux the whole file once (see `_count_frames`).

    With `max_pixels`, a bigger picture is refused (:class:`MediaTooLarge`) from its declared size before
    any frame is decoded, and no decoder allocates a bigger one (a decompression bomb stays small)."""
    with _open_input(path, max_pixels) as container:
        stream = _video_stream(container, path, max_pixels)
        if max_pixels:
            _check_pixels(stream, path, max_pixels)
        kind, frames = _classify(container, stream)
        first = _first_frame(container, stream)
        rotation = _rotation(first)
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
        video = kind == "video"
        duration = container.duration / av.time_base if video and container.duration else None
        return MediaInfo(
            kind=kind,
            width=width,
            height=height,
            frames=frames,
            fps=_frame_rate(stream) if video else None,
            has_audio=video and bool(container.streams.audio),
            container=container.format.name,
            codec=stream.codec_context.codec.canonical_name,
            duration=duration,
            rotation=rotation,
        )


def read_image(path: str | Path) -> np.ndarray:
    """uint8 [H,W,3] RGB of an image (of a video: its first frame)."""
    with _open_input(path) as container:
        frame = _first_frame(container, _video_stream(container, path))
        return _to_rgb(frame, frame.width, frame.height)


def iter_video(path: str | Path, chunk: int) -> Iterator[np.ndarray]:
    """Decoded frames as uint8 [n,H,W,3] RGB chunks, n <= chunk (only the last one is shorter).

    Only one chunk is held at a time. Every frame is scaled to the size of the first one should the
    stream change resolution midway, so chunks stack."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        buffer: list[np.ndarray] = []
        size: tuple[int, int] | None = None
        for frame in container.decode(stream):
            size = size or (frame.width, frame.height)
            buffer.append(_to_rgb(frame, *size))
            if len(buffer) == chunk:
                yield np.stack(buffer)
                buffer.clear()
        if buffer:
            yield np.stack(buffer)
        elif size is None:
            raise MediaError(f"{DECODE_FAILED}: no frame could be decoded")


def iter_thumbnails(path: str | Path, size: int = 32) -> Iterator[np.ndarray]:
    """Every frame as a uint8 ``[size, size]`` grayscale thumbnail (area-averaged, aspect ignored):
    a cheap pass over a video for measures such as scene cuts."""
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="gray", width=size, height=size, interpolation="AREA")


# --- encoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VideoEncoding:
    muxer: str
    codec: str
    audio_copy: frozenset[str]  # audio codecs remuxed as they are
    audio_codec: str  # what any other audio is re-encoded to
    audio_bit_rate: int


# H.264 via libx264 for mp4/mov: the wheel ships libx264, and every player and browser decodes it.
# webm: VP9 via libvpx (AV1 is only there as the slower SVT-AV1 encoder, and plays in fewer places).
_MP4_AUDIO = frozenset({"aac", "mp3", "alac", "ac3", "eac3"})
_PCM = frozenset({"pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be"})
_ENCODINGS = {
    "mp4": _VideoEncoding("mp4", "libx264", _MP4_AUDIO | {"opus", "flac"}, "aac", 192_000),
    "mov": _VideoEncoding("mov", "libx264", _MP4_AUDIO | _PCM, "aac", 192_000),
    "webm": _VideoEncoding("webm", "libvpx-vp9", frozenset({"opus", "vorbis"}), "libopus", 128_000),
}
# the index first, so the file plays while it downloads
_MUXER_OPTIONS = {"mp4": {"movflags": "+faststart"}, "mov": {"movflags": "+faststart"}}


def _codec_options(codec: str, crf: int) -> dict[str, str]:
    """`crf` is on x264's 0-51 scale. libvpx-vp9 uses 0-63 in constant-quality mode (bitrate 0), so
    it is stretched linearly: 18 -> 22, 23 -> 28, 51 -> 63."""
    if codec == "libx264":
        return {"crf": str(crf), "preset": "medium"}
    return {"crf": str(round(crf * 63 / 51)), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}


class _AudioTrack:
    """The first audio stream of an open source, fed into the output in step with the video.

    Packets are remuxed untouched when the output container takes the codec (`audio_copy`), else
    decoded and re-encoded (AAC for mp4/mov, Opus for webm). Timestamps are taken relative to the
    source's video start, so sync is kept, and audio stops where the written video ends."""

    def __init__(
        self,
        source: av.container.InputContainer,
        output: av.container.OutputContainer,
        encoding: _VideoEncoding,
    ):
        self._input = source
        self._source = source.streams.audio[0]
        video = source.streams.video
        start = video[0].start_time if video and video[0].start_time is not None else 0
        self._offset = float(start * video[0].time_base) if video else 0.0
        name = self._source.codec_context.codec.canonical_name  # "mp3", not the decoder's "mp3float"
        if name in encoding.audio_copy:
            self.stream = output.add_stream_from_template(self._source)
            self._packets = self._remux()
            log.info("audio: remuxing %s without re-encoding", name)
        else:
            self.stream = self._add_encoder(output, encoding)
            self._packets = self._reencode()
            log.info("audio: re-encoding %s to %s", name, encoding.audio_codec)
        self._pending: tuple[float, av.Packet] | None = None

    def _add_encoder(self, output: av.container.OutputContainer, encoding: _VideoEncoding) -> av.AudioStream:
        codec = av.Codec(encoding.audio_codec, "w")
        rate = self._source.rate if self._source.rate in (codec.audio_rates or ()) else 48000
        stream = output.add_stream(encoding.audio_codec, rate=rate)
        stream.layout = "mono" if self._source.channels == 1 else "stereo"
        stream.bit_rate = encoding.audio_bit_rate
        return stream

    def _remux(self) -> Iterator[tuple[float, av.Packet]]:
        shift = round(self._offset / self._source.time_base)
        for packet in self._input.demux(self._source):
            if packet.pts is None or not packet.size:
                continue
            packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = self.stream
            yield float(packet.pts * packet.time_base), packet

    def _reencode(self) -> Iterator[tuple[float, av.Packet]]:
        rate = self.stream.rate
        for frame in self._input.decode(self._source):
            frame.pts = None if frame.time is None else round((frame.time - self._offset) * rate)
            frame.time_base = Fraction(1, rate)
            for packet in self.stream.encode(frame):
                yield float(packet.pts * packet.time_base), packet
        for packet in self.stream.encode(None):
            yield float(packet.pts * packet.time_base), packet

    def mux_until(self, output: av.container.OutputContainer, seconds: float) -> None:
        """Mux every audio packet that starts before `seconds` (the end of the video so far)."""
        while True:
            self._pending = self._pending or next(self._packets, None)
            if self._pending is None or self._pending[0] >= seconds:
                return
            output.mux(self._pending[1])
            self._pending = None


class VideoWriter:
    """Encode RGB uint8 chunks to mp4/mov (H.264) or webm (VP9), yuv420p, tagged BT.709 limited range.

    Context manager: `with VideoWriter(...) as w: w.write(frames)`. The audio of `audio_from` (if it
    has any) is interleaved as the video is written, so nothing accumulates in memory. The file is
    written under a hidden partial name and renamed to `path` only once it is complete, so a crash or a
    kill never leaves a half-written file under the name a user asked for."""

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction,
        fmt: str = "mp4",
        crf: int = 18,
        audio_from: str | Path | None = None,
    ):
        if fmt not in _ENCODINGS:
            allowed = ", ".join(VIDEO_FORMATS)
            raise MediaError(f"unsupported video output format {fmt!r}: use one of {allowed}")
        if width % 2 or height % 2 or width < 2 or height < 2:
            raise MediaError(f"output size must be even for yuv420p, got {width}x{height}")
        if not 0 <= crf <= 51:
            raise MediaError(f"crf must be between 0 and 51, got {crf}")
        fps = Fraction(fps).limit_denominator(1001)  # a float such as 29.97 from JSON -> 2997/100
        if fps <= 0:
            raise MediaError(f"fps must be positive, got {fps}")
        self.path, self.width, self.height, self.fps = Path(path), width, height, fps
        if not self.path.parent.is_dir():
            raise MediaError(f"could not create the output {self.path}: its folder does not exist")
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self.frames = 0
        encoding = _ENCODINGS[fmt]
        self._closed = False
        self._resources = ExitStack()
        try:
            options = _MUXER_OPTIONS.get(fmt, {})
            self._output = self._resources.enter_context(
                av.open(str(self._partial), "w", format=encoding.muxer, container_options=options)
            )
            self._video = self._add_video(encoding, crf)
            self._audio = self._add_audio(Path(audio_from), encoding) if audio_from else None
        except BaseException as exc:
            self._resources.close()
            self._partial.unlink(missing_ok=True)
            if isinstance(exc, (av.FFmpegError, OSError)):
                raise MediaError(f"could not create the output {self.path.name}: {_reason(exc)}") from exc
            raise
        log.info("video: %s %dx%d at %s fps, crf %d, %s", encoding.codec, width, height, self.fps, crf, fmt)

    def _add_video(self, encoding: _VideoEncoding, crf: int) -> av.VideoStream:
        options = _codec_options(encoding.codec, crf)
        stream = self._output.add_stream(encoding.codec, rate=self.fps, options=options)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = _BT709
        context.color_range = _LIMITED_RANGE
        return stream

    def _add_audio(self, source: Path, encoding: _VideoEncoding) -> _AudioTrack | None:
        container = self._resources.enter_context(_open_input(source))
        if not container.streams.audio:
            log.info("audio: %s has no audio track", source.name)
            return None
        return _AudioTrack(container, self._output, encoding)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(flush=exc_type is None)

    def write(self, frames: np.ndarray) -> None:
        """Append frames, uint8 [n,H,W,3] RGB (or one [H,W,3] frame)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            expected = f"uint8 [n,{self.height},{self.width},3]"
            raise MediaError(f"frames must be {expected}, got {frames.dtype} {list(frames.shape)}")
        with self._encoding_errors():
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                    format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG"
                )
                frame.pts = self.frames
                frame.time_base = 1 / self.fps
                self._output.mux(self._video.encode(frame))
                self.frames += 1
            if self._audio:
                self._audio.mux_until(self._output, float(self.frames / self.fps))

    def close(self, flush: bool = True) -> None:
        """Flush the encoder, mux the audio up to the end of the video, close the files."""
        if self._closed:
            return
        self._closed = True
        complete = False
        try:
            if flush:
                with self._encoding_errors():
                    self._output.mux(self._video.encode(None))
                    if self._audio:
                        self._audio.mux_until(self._output, float(self.frames / self.fps))
            with self._encoding_errors():
                self._resources.close()
            complete = flush
        finally:
            self._resources.close()
            if complete:
                os.replace(self._partial, self.path)
            else:
                self._partial.unlink(missing_ok=True)

    @contextmanager
    def _encoding_errors(self) -> Iterator[None]:
        try:
            yield
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(f"could not encode {self.path.name}: {_reason(exc)}") from exc


# --- images -----------------------------------------------------------------------------------

# format -> (encoder, pixel format, options). jpg keeps full chroma (4:4:4) at quantiser 2
# (visually lossless); webp is lossy at quality 95.
_IMAGE_ENCODINGS = {
    "png": ("png", "rgb24", {}),
    "jpg": ("mjpeg", "yuvj444p", {}),
    "webp": ("libwebp", "yuv420p", {"quality": "95", "lossless": "0"}),
}


def write_image(path: str | Path, frame: np.ndarray, fmt: str = "png") -> None:
    """Write one uint8 [H,W,3] RGB frame as png (lossless), jpg or webp."""
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in _IMAGE_ENCODINGS:
        raise MediaError(f"unsupported image output format {fmt!r}: use one of {', '.join(IMAGE_FORMATS)}")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise MediaError(f"an image must be uint8 [H,W,3], got {frame.dtype} {list(frame.shape)}")
    encoder, pix_fmt, options = _IMAGE_ENCODINGS[fmt]
    height, width = frame.shape[:2]
    try:
        context = av.CodecContext.create(encoder, "w")
        context.width, context.height, context.pix_fmt = width, height, pix_fmt
        context.time_base = Fraction(1, 1)
        context.options = options
        if encoder == "mjpeg":
            context.qscale = 2
        source = av.VideoFrame.from_ndarray(frame, format="rgb24")
        # BT.601 is the matrix JPEG and WebP decoders assume
        picture = source.reformat(format=pix_fmt, dst_colorspace="ITU601")
        packets = context.encode(picture) + context.encode(None)
        Path(path).write_bytes(b"".join(bytes(p) for p in packets))
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"could not write the image {Path(path).name}: {_reason(exc)}") from exc
