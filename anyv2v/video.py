"""Video and image I/O: read a clip at a target fps, fit frames to the working size, write H.264 mp4.

All frames are RGB PIL images. Every function raises VideoError with one line a user can act on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import VideoError
from .files import atomic_output

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".avi", ".mkv", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Demuxers that FFmpeg uses for still images: a file opened with one of these is not a video.
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "jpegls_pipe")
MAX_DECODE_SECONDS = 600.0  # refuse to scan more than 10 minutes of video for one clip
MAX_SOURCE_PIXELS = 4096 * 4096
MAX_FRAMES = 512
# libx264 settings of every mp4 we write. mbtree=0: x264's macroblock-tree rate control (on by default) reads
# uninitialised heap memory in its AVX-512 code (libx264 core 165 as bundled with PyAV 18: the same frames
# encoded twice, with only the heap's earlier contents changed in between, gave different bitstreams and
# decoded pixels off by up to 18 levels, at 32x32 to 144x144 and at 320x320; never with mbtree=0, with
# bframes=0, or with asm limited to AVX2). Without it the same edit could give different mp4s in two processes
# (README "Reproducibility"). Cost at crf 18: about 14% larger files, no loss of quality (PSNR +0.2 dB on the
# 512x512 demo clip).
X264_OPTIONS = {"preset": "medium", "x264-params": "mbtree=0"}


@dataclass
class Clip:
    """Frames sampled from a source video, before fitting to the working size."""

    frames: list[Image.Image]
    fps: float  # the rate the frames were sampled at
    start_time: float  # seconds into the source
    source_path: str
    source_fps: float
    source_size: tuple[int, int]
    has_audio: bool
    notes: list[str] = field(default_factory=list)  # what reading changed (e.g. a clip shorter than asked)


def _open_container(path: str | os.PathLike) -> av.container.InputContainer:
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(f"video file {path} does not exist.")
    if os.path.isdir(path):
        raise VideoError(f"{path} is a folder, not a video file.")
    if os.path.getsize(path) == 0:
        raise VideoError(f"video file {path} is empty.")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(f"{path} is not a readable video ({type(exc).__name__}); use an mp4, mov, webm, avi, mkv or gif file.") from None
    fmt = container.format.name or ""
    if any(name in fmt.split(",") for name in _IMAGE_FORMATS) or path.lower().endswith(IMAGE_EXTENSIONS):
        container.close()
        raise VideoError(f"{path} is an image, not a video; upload a video clip (mp4, mov, webm, avi, mkv or gif).")
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream; upload a video clip.")
    return container


def read_video(
    path: str | os.PathLike,
    frames: int = 16,
    fps: float = 8,
    start_time: float = 0.0,
    end_time: float | None = None,
    max_frames: int = MAX_FRAMES,
    fit: Callable[[Image.Image, tuple[int, int]], Image.Image] | None = None,
) -> Clip:
    """Sample `frames` frames at `fps` starting at `start_time` (frames=0: every sample up to `end_time` or the end).

    A frame at time t is the last decoded frame whose timestamp is <= t, so a 24 fps source sampled at 8 fps
    takes every third frame. A clip with fewer frames than asked gives all it has (at least 2) and says so in
    `Clip.notes`. More than `max_frames` frames is refused: before decoding when the container's duration
    tells, else as soon as decoding passes the limit, so a long upload is never decoded whole. `fit(image,
    source_size)` is applied to each picked frame as it is taken, so only fitted frames are held in memory.
    """
    if fps <= 0:
        raise VideoError(f"fps must be positive, got {fps}.")
    if frames > max_frames:
        raise VideoError(f"{frames} frames were requested; the limit is {max_frames}. Lower the frame count.")
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_fps = float(stream.average_rate or stream.guessed_rate or fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height and width * height > MAX_SOURCE_PIXELS:
            raise VideoError(f"video is {width}x{height}; the largest supported source is 4096x4096 pixels.")
        limit = end_time if end_time is not None else math.inf
        if not frames and end_time is None and container.duration:
            limit = float(container.duration / av.time_base)
        if frames:
            limit = min(limit, start_time + (frames - 1) / fps + 1e-6)
        if not frames and math.isfinite(limit) and limit - start_time > MAX_DECODE_SECONDS:
            raise VideoError(
                f"the requested clip is {limit - start_time:.0f} s long; the limit is {MAX_DECODE_SECONDS:.0f} s. "
                "Set an end time or a frame count."
            )
        too_many = (
            f"the clip gives {{count}} frames at {fps:g} fps; the limit is {max_frames}. "
            "Set a frame count, an end time or a lower fps."
        )
        if not frames and math.isfinite(limit):
            estimate = int(math.floor((limit - start_time) * fps + 1e-6)) + 1
            if estimate > max_frames:
                raise VideoError(too_many.format(count=f"about {estimate}"))
        wanted: list[float] = []
        if frames:
            wanted = [start_time + i / fps for i in range(frames)]
        picked: list[Image.Image] = []
        last: av.VideoFrame | None = None
        last_taken: Image.Image | None = None
        orientation: tuple[int, bool] | None = None  # from the first decoded frame; constant for a stream

        def take(frame: av.VideoFrame) -> Image.Image:
            # A decoded frame may cover several wanted times (source fps < fps): convert and fit it once.
            nonlocal last_taken
            if last_taken is None:
                image = apply_orientation(frame.to_image().convert("RGB"), *orientation)
                last_taken = fit(image, image.size) if fit is not None else image
            return last_taken

        last_time = -math.inf
        next_index = 0
        decoded = 0
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * frame.time_base) if frame.pts is not None else decoded / source_fps
                decoded += 1
                if orientation is None:
                    orientation = display_orientation(frame, stream)
                if t > limit + 0.5 / fps and (not frames or next_index >= len(wanted)):
                    break
                # Emit every wanted time that lies before this frame: the previous frame covers it.
                while last is not None and _next_time(wanted, next_index, start_time, fps, frames) is not None:
                    target = _next_time(wanted, next_index, start_time, fps, frames)
                    if target > limit + 1e-6 or t <= target + 1e-6:
                        break
                    picked.append(take(last))
                    next_index += 1
                if len(picked) > max_frames:
                    raise VideoError(too_many.format(count=f"more than {max_frames}"))
                if frames and next_index >= len(wanted):
                    break
                last = frame
                last_taken = None
                last_time = t
                if t - start_time > MAX_DECODE_SECONDS + 1:
                    break
        except av.error.FFmpegError as exc:
            if last is None:
                raise VideoError(f"{path} could not be decoded ({type(exc).__name__}); the file may be corrupt.") from None
        # Frames at or after the last decoded timestamp are covered by the last frame (end of stream).
        frame_period = 1.0 / source_fps if source_fps else 0.0
        while last is not None:
            target = _next_time(wanted, next_index, start_time, fps, frames)
            if target is None or target > limit + 1e-6 or target >= last_time + frame_period - 1e-6:
                break
            picked.append(take(last))
            next_index += 1
            if len(picked) > max_frames:
                raise VideoError(too_many.format(count=f"more than {max_frames}"))
        if decoded == 0 or last is None:
            raise VideoError(f"{path} has no decodable frames; the file may be corrupt or empty.")
        if not picked:
            raise VideoError(
                f"{path} ends before start time {start_time:g} s (it is about {last_time:.2f} s long)."
            )
        if len(picked) < 2:
            raise VideoError(
                f"{os.path.basename(str(path))} gives only one frame at {fps:g} fps from {start_time:g} s; "
                "a video edit needs at least 2 frames (use a longer clip, an earlier start or a higher fps)."
            )
        notes: list[str] = []
        degrees, mirrored = orientation
        if degrees or mirrored:
            turn = {90: "90 degrees counter-clockwise", 180: "180 degrees", 270: "90 degrees clockwise"}.get(degrees)
            done = " and ".join(part for part in (f"rotated {turn}" if turn else "", "mirrored" if mirrored else "") if part)
            notes.append(f"the video's orientation metadata says to show it {done}; frames were read upright")
        if degrees in (90, 270):
            width, height = height, width
        if frames and len(picked) < frames:
            notes.append(
                f"the clip has only {len(picked)} frames at {fps:g} fps from {start_time:g} s; "
                f"used all {len(picked)} instead of {frames}"
            )
        return Clip(
            frames=picked,
            fps=float(fps),
            start_time=float(start_time),
            source_path=str(path),
            source_fps=source_fps,
            source_size=(width, height),
            has_audio=bool(container.streams.audio),
            notes=notes,
        )
    finally:
        container.close()


def display_orientation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[int, bool]:
    """(counter-clockwise degrees in 0/90/180/270, mirrored) that show `frame` upright.

    From the frame's display matrix (how phones record portrait video), else the older `rotate` stream tag
    (clockwise degrees).
    """
    for data in frame.side_data:
        if "DISPLAYMATRIX" in str(data.type).upper():
            raw = bytes(data)
            if len(raw) >= 36:
                return orientation_from_matrix(np.frombuffer(raw[:36], dtype=np.int32).tolist())
    tag = (stream.metadata or {}).get("rotate")
    if tag:
        with contextlib.suppress(ValueError):
            return int(round(-float(tag) / 90)) % 4 * 90, False
    return 0, False


def orientation_from_matrix(matrix: list[int]) -> tuple[int, bool]:
    """Decompose an FFmpeg display matrix (3x3, 16.16 fixed point) into a rotation then a left-right mirror.

    FFmpeg writes a counter-clockwise rotation as [cos, -sin; sin, cos] and a mirror by negating the first
    column (av_display_matrix_flip), so a negative determinant means mirrored. Angles round to quarter turns.
    """
    a, b, c, d = (value / 65536.0 for value in (matrix[0], matrix[1], matrix[3], matrix[4]))
    mirrored = a * d - b * c < 0
    if mirrored:
        a, c = -a, -c
    if a == 0 and c == 0:
        return 0, False  # not a rotation matrix: show as decoded
    degrees = int(round(math.degrees(math.atan2(c, a)) / 90)) % 4 * 90
    return degrees, mirrored


_QUARTER_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def apply_orientation(image: Image.Image, degrees: int, mirrored: bool) -> Image.Image:
    """Rotate counter-clockwise by `degrees` (a quarter turn multiple), then mirror left-right if asked."""
    if degrees in _QUARTER_TURNS:
        image = image.transpose(_QUARTER_TURNS[degrees])
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def _next_time(wanted: list[float], index: int, start: float, fps: float, frames: int) -> float | None:
    if frames:
        return wanted[index] if index < len(wanted) else None
    return start + index / fps


SIZE_MULTIPLE = 8  # the VAE downsamples by 8: every working side is a multiple of it
MIN_SIDE = 32


def keep_aspect_size(source_size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """Working size that keeps the source aspect: the longest side = `longest_side`, the other scaled to match,
    both rounded to multiples of 8 (within 4 pixels of the true aspect; 320x240 at 128 gives 128x96)."""
    src_w, src_h = source_size
    scale = longest_side / max(src_w, src_h)

    def side(length: int) -> int:
        return max(MIN_SIDE, int(math.floor(length * scale / SIZE_MULTIPLE + 0.5)) * SIZE_MULTIPLE)

    return side(src_w), side(src_h)


def working_size(source_size: tuple[int, int], width: int, height: int, resize_mode: str) -> tuple[int, int]:
    """The size every frame (and the edited first frame) is fitted to."""
    if resize_mode == "keep_aspect":
        return keep_aspect_size(source_size, max(width, height))
    return width, height


def fit_frame(image: Image.Image, size: tuple[int, int], resize_mode: str = "crop") -> Image.Image:
    """Fit one frame to `size`: scale to cover and center-crop ("crop") or resize to it ("keep_aspect").

    The same function prepares video frames and user-supplied edited frames, so a frame exported at the
    working size and uploaded again passes through unchanged.
    """
    width, height = size
    if image.size == (width, height):
        return image.copy()
    if resize_mode == "keep_aspect":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def frame_fitter(width: int, height: int, resize_mode: str = "crop") -> Callable[[Image.Image, tuple[int, int]], Image.Image]:
    """`read_video`'s `fit`: each frame to the working size for its source size, as it is read."""

    def fit(image: Image.Image, source_size: tuple[int, int]) -> Image.Image:
        return fit_frame(image, working_size(source_size, width, height, resize_mode), resize_mode)

    return fit


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (EXIF orientation applied), keeping its mode (RGBA stays RGBA)."""
    path = str(path)
    if not os.path.exists(path):
        raise VideoError(f"image file {path} does not exist.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.width * img.height > MAX_SOURCE_PIXELS:
                raise VideoError(f"image {path} is {img.width}x{img.height}; the limit is 4096x4096 pixels.")
            return to_8bit(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise VideoError(f"{path} is not a readable image ({type(exc).__name__}); use a PNG or JPEG file.") from None


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit gray (I;16), 32-bit integer (I) and float (F) images scaled to 8-bit L.

    PIL's own convert("RGB") clips those to 255 (a 16-bit gray PNG turns white). 16-bit RGB(A) PNGs already
    open as 8-bit RGB(A) (Pillow keeps the high byte) and pass through unchanged.
    """
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")
    if image.mode == "I":  # usually 16-bit data widened; values above 255 say so
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        scaled = (values + 128) // 257 if values.max(initial=0) > 255 else values
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode == "F":  # floats in [0, 1] (else taken as 0..255)
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        scaled = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
        return Image.fromarray(np.round(scaled.clip(0, 255)).astype(np.uint8), "L")
    return image


def prepare_edited_frame(
    image: Image.Image, source_frame: Image.Image, resize_mode: str = "crop"
) -> tuple[Image.Image, list[str]]:
    """Bring a user's edited first frame to the working size and RGB, saying what was changed.

    `source_frame` is the prepared source first frame (working size): transparent parts of an RGBA edit
    show the source frame beneath, so a user can paint only what changes.
    """
    notes: list[str] = []
    size = source_frame.size
    image = to_8bit(image)
    if image.size != size:
        aspect_in = image.width / image.height
        aspect_out = size[0] / size[1]
        how = "center-cropped and resized" if resize_mode == "crop" and abs(aspect_in - aspect_out) > 1e-3 else "resized"
        notes.append(f"edited frame was {image.width}x{image.height}; {how} to {size[0]}x{size[1]} like the video frames")
        image = fit_frame(image, size, resize_mode)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            notes.append("edited frame has transparency; composited onto the source first frame")
        image = Image.alpha_composite(source_frame.convert("RGBA"), rgba).convert("RGB")
    elif image.mode != "RGB":
        notes.append(f"edited frame was {image.mode}; converted to RGB")
        image = image.convert("RGB")
    return image, notes


def write_video(
    frames: list[Image.Image] | np.ndarray,
    path: str | os.PathLike,
    fps: float,
    audio_source: str | os.PathLike | None = None,
    audio_start: float = 0.0,
    crf: int = 18,
    overwrite: bool = False,
) -> Path:
    """Write frames as browser-playable H.264 (yuv420p, faststart) mp4, atomically; the same frames give the
    same bytes in any process (`X264_OPTIONS`).

    With `audio_source`, its first audio stream from `audio_start` for the clip's duration is kept (AAC).
    Without `overwrite` an existing `path` is never replaced: FileExistsError, even when the file appeared
    while this one was being encoded.
    """
    path = Path(path)
    if isinstance(frames, np.ndarray):
        frames = [Image.fromarray(f) for f in frames]
    if not frames:
        raise VideoError("no frames to write.")
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise VideoError(f"H.264 needs an even width and height, got {width}x{height}.")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_output(path, overwrite=overwrite) as tmp_name:
        with av.open(tmp_name, mode="w", format="mp4", options={"movflags": "faststart"}) as out:
            vstream = out.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": str(crf), **X264_OPTIONS}
            astream = None
            audio_in = None
            if audio_source is not None:
                audio_in = av.open(str(audio_source))
                if audio_in.streams.audio:
                    src = audio_in.streams.audio[0]
                    astream = out.add_stream("aac", rate=src.rate or 44100)
                    astream.layout = "stereo"
            for index, image in enumerate(frames):
                if image.size != (width, height):
                    raise VideoError(f"frame {index} is {image.size[0]}x{image.size[1]}, expected {width}x{height}.")
                vframe = av.VideoFrame.from_image(image.convert("RGB"))
                for packet in vstream.encode(vframe):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
            if astream is not None:
                _copy_audio(audio_in, astream, out, audio_start, len(frames) / float(fps))
            if audio_in is not None:
                audio_in.close()
    return path


def _copy_audio(audio_in, astream, out, start: float, duration: float) -> None:
    """Re-encode the source audio between start and start + duration into `astream`."""
    src = audio_in.streams.audio[0]
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=astream.rate)
    sample_rate = astream.rate
    first = int(round(start * sample_rate))
    last = int(round((start + duration) * sample_rate))
    position = None
    written = 0
    for frame in audio_in.decode(src):
        for resampled in resampler.resample(frame):
            if position is None:
                t0 = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                position = int(round(t0 * sample_rate))
            data = resampled.to_ndarray()
            n = data.shape[1]
            lo, hi = max(first - position, 0), min(last - position, n)
            position += n
            if hi <= lo:
                continue
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, lo:hi]), format="fltp", layout="stereo")
            chunk.sample_rate = sample_rate
            chunk.pts = written
            written += hi - lo
            for packet in astream.encode(chunk):
                out.mux(packet)
        if position is not None and position >= last:
            break
    for packet in astream.encode(None):
        out.mux(packet)
