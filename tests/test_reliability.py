"""Reliability on a shared server: long inputs, outputs never replaced, rotation, 16-bit images, disk and
permissions, private records, reproducible edits across processes."""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from anyv2v.config import EditConfig
from anyv2v.errors import OutputError, VideoError
from anyv2v.files import atomic_output, derived_output_path, safe_stem
from anyv2v.pipeline import prepare_clip, run_edit
from anyv2v.video import load_image, prepare_edited_frame, read_video, write_video

from .conftest import REPO


def write_clip(path, seconds: float, fps: int, size=(64, 64), fmt: str | None = None, rotation=None) -> None:
    """A flat clip, frame i of gray i % 256; raw h264 (`fmt="h264"`) has no duration in its container."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        if rotation is not None:
            stream.set_display_rotation(*rotation)
        for i in range(int(seconds * fps)):
            array = np.full((size[1], size[0], 3), i % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class CountingFit:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: Image.Image, source_size) -> Image.Image:
        self.calls += 1
        return image.resize((32, 32))


def small_config(tiny_model, tmp_path, **changes) -> EditConfig:
    return EditConfig(
        model=str(tiny_model), width=64, height=64, frames=4, steps=10, inversion_steps=10,
        cache_dir=str(tmp_path / "cache"), **changes,
    ).validate()


# ---- 1. long inputs are refused before (or while) decoding, never decoded whole -------------------------------


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "ten_minutes.mp4"
    write_clip(path, seconds=600, fps=1)
    return path


def test_a_long_clip_with_frames_0_is_refused_before_any_frame_is_fitted(ten_minutes):
    fit = CountingFit()
    with pytest.raises(VideoError, match=r"about 4801 frames at 8 fps; the limit is 512"):
        read_video(ten_minutes, frames=0, fps=8, fit=fit)
    assert fit.calls == 0
    fit = CountingFit()
    with pytest.raises(VideoError, match=r"about 601 frames at 1 fps; the limit is 100\."):  # an app's own limit
        read_video(ten_minutes, frames=0, fps=1, max_frames=100, fit=fit)
    assert fit.calls == 0


def test_prepare_clip_quotes_the_limit_it_was_given(ten_minutes):
    with pytest.raises(VideoError, match=r"the limit is 48\."):
        prepare_clip(ten_minutes, EditConfig(frames=0, fps=1, width=64, height=64), max_frames=48)


def test_a_stream_of_unknown_duration_stops_decoding_at_the_limit(tmp_path):
    path = tmp_path / "stream.h264"
    write_clip(path, seconds=75, fps=8, fmt="h264")  # 600 frames, no duration in the container
    with av.open(str(path)) as container:
        assert container.duration is None
    fit = CountingFit()
    with pytest.raises(VideoError, match=r"more than 40 frames at 8 fps; the limit is 40"):
        read_video(path, frames=0, fps=8, max_frames=40, fit=fit)
    assert fit.calls <= 41  # decoding stopped at the limit, not at frame 600


def test_cli_frames_0_uses_the_engines_cap(ten_minutes, tiny_model, demo, tmp_path, capsys):
    from anyv2v.cli import main

    out = tmp_path / "o.mp4"
    code = main(["edit", "--video", str(ten_minutes), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
                 "--prompt", "a dog", "--out", str(out), "--model", str(tiny_model), "--frames", "0", "--size", "64x64",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.splitlines() == [err] and "the limit is 512" in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()


# ---- 3. outputs are never replaced by accident --------------------------------------------------------------


def test_a_file_created_at_out_during_the_edit_is_kept(tiny_model, demo, tmp_path):
    out = tmp_path / "edit.mp4"

    def someone_else_writes(stage, done, total):
        if stage == "sampling" and done == 1:
            out.write_bytes(b"another program's file")

    with pytest.raises(OutputError, match="was created by something else during the edit"):
        run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog", small_config(tiny_model, tmp_path),
                 out, progress=someone_else_writes)
    assert out.read_bytes() == b"another program's file"
    assert not out.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "edit.mp4"]  # no temp file left

    # The same with --overwrite replaces it, as asked.
    result = run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog",
                      small_config(tiny_model, tmp_path), out, overwrite=True, progress=someone_else_writes)
    assert result.video_path == out and out.read_bytes()[4:8] == b"ftyp"


def test_a_json_taken_meanwhile_removes_the_new_video_too(tiny_model, demo, tmp_path):
    out = tmp_path / "edit.mp4"

    def someone_else_writes(stage, done, total):
        if stage == "sampling" and done == 1:
            out.with_suffix(".json").write_text("{}")

    with pytest.raises(OutputError, match="created by something else"):
        run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog", small_config(tiny_model, tmp_path),
                 out, progress=someone_else_writes)
    assert not out.exists() and out.with_suffix(".json").read_text() == "{}"


def test_atomic_output_publishes_once_without_overwrite(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(FileExistsError):
        with atomic_output(target, overwrite=False) as second:  # two writers of one name: the first wins
            with atomic_output(target, overwrite=False) as first:
                open(first, "w").write("1")
            open(second, "w").write("2")
    assert target.read_text() == "1"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left


def test_editors_cli_refuses_to_replace_in_one_line(demo, tmp_path, capsys):
    from editors.__main__ import main

    out = tmp_path / "frame.png"
    argv = ["export-frame", "--video", str(demo / "kitten.mp4"), "--out", str(out), "--width", "64", "--height", "64"]
    assert main(argv) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "already exists" in err
    assert out.read_bytes() == before


# ---- 5. rotation metadata --------------------------------------------------------------------------------------


def quadrants(image: Image.Image) -> list[int]:
    """Brightness (0 or 1) of the four quadrants, clockwise from top-left."""
    array = np.asarray(image.convert("L"), dtype=float)
    h, w = array.shape
    boxes = [(0, 0), (0, 1), (1, 1), (1, 0)]
    return [int(array[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2].mean() > 128) for r, c in boxes]


@pytest.mark.parametrize(
    "rotation, size, expected",
    [
        ((0,), (96, 64), [1, 0, 0, 0]),  # no metadata: as decoded (white top-left)
        ((90,), (64, 96), [0, 0, 0, 1]),  # 90 counter-clockwise: top-left goes to bottom-left
        ((-90,), (64, 96), [0, 1, 0, 0]),  # a phone's portrait video (rotate=90 clockwise)
        ((180,), (96, 64), [0, 0, 1, 0]),
        ((0, True), (96, 64), [0, 1, 0, 0]),  # mirrored
        ((90, True), (64, 96), [0, 0, 1, 0]),  # rotated, then mirrored
    ],
)
def test_rotation_metadata_is_applied_when_reading(tmp_path, rotation, size, expected):
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(*rotation)
        array = np.zeros((64, 96, 3), np.uint8)
        array[:32, :48] = 255  # white top-left quadrant as stored
        for _ in range(4):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    fit = []
    clip = read_video(path, frames=4, fps=8, fit=lambda image, source: fit.append(source) or image)
    assert clip.frames[0].size == size and clip.source_size == size and set(fit) == {size}
    assert quadrants(clip.frames[0]) == expected
    assert bool(clip.notes) == (rotation != (0,))
    # keep_aspect sees the upright shape: a portrait phone video stays portrait.
    prepared = prepare_clip(path, EditConfig(frames=2, width=48, height=48, resize_mode="keep_aspect"))
    assert prepared.size == ((32, 48) if size == (64, 96) else (48, 32))


# ---- 6. 16-bit PNGs ------------------------------------------------------------------------------------------


def write_png16(path, array: np.ndarray) -> None:
    """A 16-bit PNG (gray: 2-D, RGB: 3 channels), written by hand since PIL saves RGB only at 8 bits."""
    height, width = array.shape[:2]
    color_type = 0 if array.ndim == 2 else 2
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_pngs_scale_to_8_bits(tmp_path):
    gray = np.tile(np.array([0, 16384, 32768, 65535], np.uint16), (8, 2))
    write_png16(tmp_path / "gray.png", gray)
    assert Image.open(tmp_path / "gray.png").mode == "I;16"
    loaded = np.asarray(load_image(tmp_path / "gray.png").convert("RGB"))
    assert loaded[0, :4, 0].tolist() == [0, 64, 128, 255] and (loaded[..., 0] == loaded[..., 2]).all()

    rgb = np.zeros((8, 8, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 0
    write_png16(tmp_path / "rgb.png", rgb)
    assert np.asarray(load_image(tmp_path / "rgb.png").convert("RGB"))[0, 0].tolist() == [255, 128, 0]

    # An in-memory 16-bit image (the API path) is scaled the same way.
    source = Image.new("RGB", (8, 8))
    edited, notes = prepare_edited_frame(Image.fromarray(np.full((8, 8), 32768, np.uint16)), source)
    assert np.asarray(edited)[0, 0].tolist() == [128, 128, 128]


# ---- 9. disk and permissions -----------------------------------------------------------------------------------


def test_an_unwritable_output_folder_fails_before_any_work(tiny_model, demo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    stages = []
    with pytest.raises(OutputError, match="cannot write outputs to"):
        run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog", small_config(tiny_model, tmp_path),
                 blocker / "edit.mp4", progress=lambda *report: stages.append(report))
    assert stages == [] and not (tmp_path / "cache").exists()


def test_a_cache_that_fills_up_while_writing_warns_and_the_edit_succeeds(tiny_model, demo, tmp_path, monkeypatch):
    import anyv2v.cache

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(anyv2v.cache, "save_file", disk_full)
    out = tmp_path / "o.mp4"
    result = run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog",
                      small_config(tiny_model, tmp_path), out)
    assert result.video_path.exists() and not result.inversion_from_cache
    notes = json.loads(result.json_path.read_text())["notes"]
    assert any("could not be saved to the cache (No space left on device)" in note for note in notes)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]  # no entry, no partial file


def test_the_free_space_message_states_need_and_margin(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from anyv2v.cache import InversionCache
    from anyv2v.errors import AnyV2VError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 30 * 2**20))
    with pytest.raises(AnyV2VError, match=r"needs 20 MB plus a 64 MB safety margin \(84 MB in all\) and 30 MB are free"):
        InversionCache(tmp_path, 2**30).check_space(20 * 2**20)


# ---- 14. privacy ---------------------------------------------------------------------------------------------------


def test_the_record_holds_no_server_paths_and_says_the_device(tiny_model, demo, tmp_path):
    result = run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog",
                      small_config(tiny_model, tmp_path), tmp_path / "o.mp4")
    text = result.json_path.read_text()
    record = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert str(tmp_path) not in text and str(tiny_model.parent) not in text
    assert record["model"] == record["settings"]["model"] == tiny_model.name
    assert record["settings"]["cache_dir"] == "cache"
    assert (record["settings"]["device"], record["settings"]["dtype"]) == ("cpu", "float32")
    assert EditConfig(model="ali-vilab/i2vgen-xl").model == "ali-vilab/i2vgen-xl"
    from anyv2v.pipeline import public_model_name

    assert public_model_name("ali-vilab/i2vgen-xl") == "ali-vilab/i2vgen-xl"
    assert public_model_name("/srv/models/i2vgen-xl/") == "i2vgen-xl"


def test_file_modes_follow_the_umask(tmp_path):
    """A private umask (077) gives private outputs and cache entries; read once at import, in a new process."""
    script = (
        "import os, sys, torch; os.umask(0o077)\n"
        "from anyv2v.files import atomic_output\n"
        "from anyv2v.cache import Inversion, InversionCache\n"
        "from anyv2v.video import write_video\n"
        "from PIL import Image\n"
        "d = sys.argv[1]\n"
        "write_video([Image.new('RGB', (32, 32))] * 2, os.path.join(d, 'o.mp4'), 8)\n"
        "InversionCache(os.path.join(d, 'cache'), 2**30).put(Inversion({1: torch.zeros(1, 4, 2, 4, 4)}, 'k'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert oct((tmp_path / "o.mp4").stat().st_mode & 0o777) == oct(0o600)
    assert oct((tmp_path / "cache" / "k.safetensors").stat().st_mode & 0o777) == oct(0o600)
    assert oct((tmp_path / "cache" / ".lock").stat().st_mode & 0o777) == oct(0o600)


def test_the_cache_lock_does_not_follow_a_symlink(tmp_path):
    import torch

    from anyv2v.cache import Inversion, InversionCache

    victim = tmp_path / "victim.txt"
    (tmp_path / "cache").mkdir()
    os.symlink(victim, tmp_path / "cache" / ".lock")
    with pytest.raises(OSError) as info:
        InversionCache(tmp_path / "cache", 2**30).put(Inversion({1: torch.zeros(1, 4, 2, 4, 4)}, "k"))
    assert info.value.errno == errno.ELOOP
    assert not victim.exists()


# ---- default output names ------------------------------------------------------------------------------------------


def test_default_output_names_derive_from_the_source(tiny_model, demo, tmp_path):
    assert safe_stem("My Kitten (1) é.mp4") == "My-Kitten-1"
    assert safe_stem("../../etc/passwd") == "passwd" and safe_stem("....mp4") == "video"
    assert len(safe_stem("x" * 500 + ".mp4")) == 40
    assert re.fullmatch(r"kitten-edit-[0-9a-f]{8}\.mp4", derived_output_path(tmp_path, "kitten.mp4").name)
    source = tmp_path / "my kitten (1).mp4"
    source.write_bytes((demo / "kitten.mp4").read_bytes())
    result = run_edit(source, demo / "edited" / "kitten__dog.png", "a dog", small_config(tiny_model, tmp_path),
                      output_dir=tmp_path / "outputs")
    assert result.video_path.parent == tmp_path / "outputs"
    assert re.fullmatch(r"my-kitten-1-edit-[0-9a-f]{8}\.mp4", result.video_path.name)
    assert result.json_path == result.video_path.with_suffix(".json")


# ---- 13. reproducible across processes ------------------------------------------------------------------------------


def test_the_same_frames_encode_to_the_same_bytes_whatever_the_heap_held_before(tmp_path):
    """x264's macroblock tree reads uninitialised heap memory in its AVX-512 code: with it on, the same frames
    gave different mp4s depending on what earlier allocations left behind (12 of 12 runs here), hence different
    frames from two processes. write_video turns it off (video.X264_OPTIONS). Only CPUs with AVX-512 can fail."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (11, 11, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 88x88, 8x8 blocks
    frames = np.stack([np.roll(base, 2 * i, 1) for i in range(6)])
    digests = set()
    for attempt in range(12):
        # Fill freed heap chunks with random bytes, so an uninitialised read would see different garbage.
        sizes = rng.integers(1000, 400000, 60)
        junk = [np.random.default_rng(attempt * 100 + k).bytes(size) for k, size in enumerate(sizes)]
        del junk
        path = write_video(frames, tmp_path / f"{attempt}.mp4", 8)
        digests.add(path.read_bytes())
    assert len(digests) == 1


def test_the_same_edit_in_two_processes_gives_the_same_frames(tiny_model, demo, tmp_path):
    """Two fresh processes, each with its own empty cache (so each computes its own inversion), one seed; they
    run at the same time (independent processes, so the order does not matter and the test takes one run)."""
    outputs, processes = [], []
    for run in ("first", "second"):
        out = tmp_path / f"{run}.mp4"
        cmd = [
            sys.executable, "-m", "anyv2v", "edit", "--video", str(demo / "kitten.mp4"),
            "--edited-frame", str(demo / "edited" / "kitten__dog.png"), "--prompt", "a dog", "--out", str(out),
            "--model", str(tiny_model), "--size", "64x64", "--frames", "4", "--steps", "10",
            "--inversion-steps", "10", "--random-ratio", "0.3", "--seed", "1234", "--cache-dir", str(tmp_path / run),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes side by side: one core each
        processes.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        outputs.append(out)
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    first, second = (np.stack([np.asarray(f) for f in read_video(path, frames=0, fps=8).frames]) for path in outputs)
    assert first.shape == (4, 64, 64, 3)
    assert np.array_equal(first, second)
