"""Video I/O: containers users upload, frame sampling at a target fps, fitting, H.264 output."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from anyv2v.errors import VideoError
from anyv2v.video import fit_frame, keep_aspect_size, prepare_edited_frame, read_video, write_video


def write_numbered(path, codec: str, pix_fmt: str, count: int = 12, fps: int = 10, size=(96, 64)) -> None:
    """Frame i is a flat gray of value 20*i, so a sampled frame tells which source frame it came from."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        for i in range(count):
            array = np.full((size[1], size[0], 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def source_index(frame: Image.Image) -> int:
    return int(round(np.asarray(frame).mean() / 20))


@pytest.mark.parametrize(
    "ext, codec, pix_fmt",
    [("mp4", "libx264", "yuv420p"), ("mov", "libx264", "yuv420p"), ("webm", "libvpx-vp9", "yuv420p"),
     ("avi", "mpeg4", "yuv420p"), ("mkv", "libx264", "yuv420p"), ("gif", "gif", "rgb8")],
)
def test_reads_every_supported_container(tmp_path, ext, codec, pix_fmt):
    path = tmp_path / f"clip.{ext}"
    write_numbered(path, codec, pix_fmt)
    clip = read_video(path, frames=0, fps=10)
    assert len(clip.frames) == 12 and clip.frames[0].size == (96, 64) and clip.frames[0].mode == "RGB"
    assert [source_index(f) for f in clip.frames] == list(range(12))


def test_samples_at_the_target_fps_from_the_start_time(tmp_path):
    path = tmp_path / "clip.mp4"
    write_numbered(path, "libx264", "yuv420p", count=12, fps=10)
    clip = read_video(path, frames=4, fps=5, start_time=0.2)  # t = 0.2, 0.4, 0.6, 0.8 s
    assert [source_index(f) for f in clip.frames] == [2, 4, 6, 8]
    assert len(read_video(path, frames=0, fps=5).frames) == 6
    short = read_video(path, frames=8, fps=5)  # the clip has 6 samples at 5 fps: all of them, with a note
    assert len(short.frames) == 6 and "used all 6 instead of 8" in short.notes[0]


def test_write_video_is_browser_playable_h264(tmp_path, demo):
    clip = read_video(demo / "kitten.mp4", frames=16, fps=8)
    out = write_video(clip.frames, tmp_path / "o.mp4", 8)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == 8.0
        assert sum(1 for _ in container.decode(stream)) == 16
    assert not list(tmp_path.glob("*.part"))


def test_mismatched_frames_fail_without_leaving_a_file(tmp_path):
    frames = [Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32))]
    with pytest.raises(VideoError, match="frame 1 is 32x32, expected 64x64"):
        write_video(frames, tmp_path / "o.mp4", 8)
    assert list(tmp_path.iterdir()) == []


def test_fitting_matches_for_frames_and_uploads():
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8))
    assert fit_frame(wide, (64, 64)).size == (64, 64)
    assert keep_aspect_size((160, 90), 512) == (512, 288)  # 16:9 exactly
    assert keep_aspect_size((90, 160), 512) == (288, 512)
    assert keep_aspect_size((320, 240), 128) == (128, 96)  # 4:3 exactly (multiples of 64 gave 128x128)
    source = fit_frame(wide, (64, 64))
    fitted, notes = prepare_edited_frame(wide, source)
    assert np.array_equal(np.asarray(fitted), np.asarray(source))  # an upload is fitted exactly like a frame
    same, notes = prepare_edited_frame(source.copy(), source)
    assert notes == [] and np.array_equal(np.asarray(same), np.asarray(source))


def test_tiny_and_huge_inputs(tmp_path):
    path = tmp_path / "one.mp4"
    write_numbered(path, "libx264", "yuv420p", count=1)
    with pytest.raises(VideoError, match="at least 2 frames"):
        read_video(path, frames=0, fps=8)
    with pytest.raises(VideoError, match="is empty"):
        (tmp_path / "empty.mp4").write_bytes(b"")
        read_video(tmp_path / "empty.mp4")
