"""Synthetic test media, generated at test time with PyAV (no binary fixtures in the repo).

Frames are structured rather than flat (diagonal gradients that drift with time, a bright square that
moves, a thin grid) so that resizing, seams, colour shifts and dropped or reordered frames all show up
in a comparison. `pattern(i, w, h)` returns the exact RGB frame `i` that `make_video` encodes, so a test
can compare what it decodes against the source; lossy codecs need a tolerance.

Deliberately independent of `seedvr.media`: the tests of that module must not generate their inputs
with the code under test.
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# container -> (video codec, pixel format, audio codec or None); a choice every player accepts
VIDEO_FORMATS: dict[str, tuple[str, str, str | None]] = {
    "mp4": ("libx264", "yuv420p", "aac"),
    "mov": ("libx264", "yuv420p", "aac"),
    "mkv": ("libx264", "yuv420p", "aac"),
    "webm": ("libvpx-vp9", "yuv420p", "libopus"),
    "avi": ("mpeg4", "yuv420p", "libmp3lame"),
    "gif": ("gif", "rgb8", None),
}
_MUXERS = {"mkv": "matroska"}
AUDIO_RATE = 48000
TONE_HZ = 440.0

# image format -> (encoder, pixel format for RGB, pixel format for RGBA or None)
IMAGE_FORMATS: dict[str, tuple[str, str, str | None]] = {
    "png": ("png", "rgb24", "rgba"),
    "jpg": ("mjpeg", "yuvj444p", None),
    "webp": ("libwebp", "yuv420p", "yuva420p"),
    "bmp": ("bmp", "bgr24", "bgra"),
    "tiff": ("tiff", "rgb24", "rgba"),
}


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of the synthetic clip: uint8 [height, width, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = (x * 255.0 / max(width - 1, 1) + 6 * index) % 256
    green = y * 255.0 / max(height - 1, 1)
    blue = 128 + 100 * np.sin((x + y) / 9.0 + 0.4 * index)
    frame = np.stack([red, green, blue], axis=-1)
    side = max(min(width, height) // 4, 2)
    left = (3 * index) % max(width - side, 1)
    top = (2 * index) % max(height - side, 1)
    frame[top : top + side, left : left + side] = (250, 250, 40)
    frame[::16, :] = 20  # a thin grid makes scaling and seams measurable
    frame[:, ::16] = 20
    return np.clip(frame, 0, 255).astype(np.uint8)


def tone(seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """A stereo 440 Hz sine, float32 [2, samples] in [-0.5, 0.5]."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    wave = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.stack([wave, wave])


def make_video(
    path: str | Path,
    frames: int = 10,
    width: int = 64,
    height: int = 48,
    fps: Fraction | int = Fraction(25),
    with_audio: bool = True,
    fmt: str = "mp4",
    codec: str | None = None,
    pix_fmt: str | None = None,
    rotation: int = 0,
) -> Path:
    """Write a clip of `pattern` frames and, when the container allows, a tone as long as the video.

    `codec`/`pix_fmt` override the defaults of VIDEO_FORMATS (e.g. "libx264", "yuv444p" or
    "yuv420p10le"); `rotation` stores a display matrix (degrees counter-clockwise). The extension of
    `path` is irrelevant: the container is `fmt`. gif has no audio, so `with_audio` is ignored there,
    and it stores delays in 1/100 s, so use a rate such as 10, 20, 25 or 50 for an exact gif fps.
    """
    path = Path(path)
    default_codec, default_pix, audio_codec = VIDEO_FORMATS[fmt]
    fps = Fraction(fps)
    with av.open(str(path), "w", format=_MUXERS.get(fmt, fmt)) as out:
        video = out.add_stream(codec or default_codec, rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = pix_fmt or default_pix
        video.bit_rate = 4_000_000  # generous for tiny frames, so decoded clips stay close to `pattern`
        if rotation:
            video.set_display_rotation(rotation)
        audio = None
        if with_audio and audio_codec:
            audio = out.add_stream(audio_codec, rate=AUDIO_RATE if audio_codec != "libmp3lame" else 44100)
            audio.layout = "stereo"
        for i in range(frames):
            rgb = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            frame = rgb.reformat(format=video.pix_fmt)
            frame.pts = i
            frame.time_base = 1 / fps
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if audio is not None:
            _write_tone(out, audio, float(frames / fps))
    return path


def _write_tone(out: av.container.OutputContainer, audio: av.AudioStream, seconds: float) -> None:
    samples = tone(seconds, audio.rate)
    block = 1024
    for start in range(0, samples.shape[1], block):
        block_samples = np.ascontiguousarray(samples[:, start : start + block])
        frame = av.AudioFrame.from_ndarray(block_samples, format="fltp", layout="stereo")
        frame.sample_rate = audio.rate
        frame.pts = start
        frame.time_base = Fraction(1, audio.rate)
        out.mux(audio.encode(frame))
    out.mux(audio.encode())


def make_image(
    path: str | Path,
    width: int = 64,
    height: int = 48,
    fmt: str = "png",
    alpha: bool = False,
    exif_orientation: int | None = None,
) -> Path:
    """Write `pattern(0, width, height)` as a still image; with `alpha`, the left half is transparent
    (alpha 0) and a middle band half transparent (alpha 128). `exif_orientation` (jpg only, 1-8)
    adds the EXIF tag phones use for portrait photos. The extension of `path` is irrelevant."""
    path = Path(path)
    encoder, rgb_pix, rgba_pix = IMAGE_FORMATS[fmt]
    pixels = pattern(0, width, height)
    source = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    pix_fmt = rgb_pix
    if alpha:
        if rgba_pix is None:
            raise ValueError(f"{fmt} has no alpha channel")
        source = av.VideoFrame.from_ndarray(with_alpha(pixels), format="rgba")
        pix_fmt = rgba_pix
    context = av.CodecContext.create(encoder, "w")
    context.width, context.height, context.pix_fmt = width, height, pix_fmt
    context.time_base = Fraction(1, 1)
    if encoder == "mjpeg":
        context.qscale = 2  # near-lossless, so colour checks can be tight
    packets = context.encode(source.reformat(format=pix_fmt)) + context.encode(None)
    data = b"".join(bytes(p) for p in packets)
    if exif_orientation is not None:
        data = data[:2] + _exif_orientation_segment(exif_orientation) + data[2:]  # right after SOI
    path.write_bytes(data)
    return path


def _exif_orientation_segment(orientation: int) -> bytes:
    """A JPEG APP1 segment holding a little-endian TIFF header and one IFD entry: Orientation (0x0112)."""
    entry = struct.pack("<HHII", 0x0112, 3, 1, orientation)  # tag, type SHORT, count 1, value
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def with_alpha(pixels: np.ndarray) -> np.ndarray:
    """The RGBA version of an RGB frame used by make_image(alpha=True)."""
    height, width = pixels.shape[:2]
    a = np.full((height, width, 1), 255, np.uint8)
    a[:, : width // 2] = 0
    a[height // 3 : 2 * height // 3, width // 2 :] = 128
    return np.concatenate([pixels, a], axis=-1)


def make_offset_clip(
    path: str | Path, fmt: str, first_pts: int, click_at: float, frames: int = 12, fps: int = 25
) -> Path:
    """H.264 + AAC clip whose video starts at frame `first_pts` (in 1/fps) while the audio starts at 0,
    silent but for a loud burst from `click_at` seconds on. A positive `first_pts` is video that starts
    after the audio (mkv stores the start time; mp4/mov add an empty edit); a negative one gives mp4/mov
    an edit list that hides the first `-first_pts` frames, which are decoded but never shown."""
    path = Path(path)
    with av.open(str(path), "w", format=_MUXERS.get(fmt, fmt)) as out:
        video = out.add_stream("libx264", rate=fps, options={"bf": "0"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "stereo"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, 64, 48), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        seconds = (max(first_pts, 0) + frames) / fps + 0.2
        samples = tone(seconds, AUDIO_RATE)
        samples[:, : round(click_at * AUDIO_RATE)] = 0
        for start in range(0, samples.shape[1], 1024):
            block = np.ascontiguousarray(samples[:, start : start + 1024])
            block = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            block.sample_rate, block.pts, block.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
            out.mux(audio.encode(block))
        out.mux(audio.encode())
    return path


def make_png_bomb(path: str | Path, width: int = 15000, height: int = 15000) -> Path:
    """A decompression bomb: a valid all-black RGB PNG of width x height, deflated to a few hundred KB (15000x15000:
    656 KB on disk, 675 MB of pixels). Written by hand, row by row, so making it never holds the pixels."""
    deflate = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return Path(path)
