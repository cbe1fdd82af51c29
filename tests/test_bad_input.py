"""Bad input: one clear line, exit code 1, no traceback, nothing left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anyv2v.cli import main

SMALL = ["--size", "64x64", "--frames", "4", "--steps", "10", "--inversion-steps", "10"]


@pytest.fixture()
def run_cli(tiny_model, demo, tmp_path, capsys):
    def run(*extra: str, video=None, frame=None, out=None):
        out = out or tmp_path / "out" / "edit.mp4"
        argv = [
            "edit", "--video", str(video or demo / "kitten.mp4"),
            "--edited-frame", str(frame or demo / "edited" / "kitten__dog.png"), "--prompt", "a dog",
            "--out", str(out), "--model", str(tiny_model), "--cache-dir", str(tmp_path / "cache"), *SMALL, *extra,
        ]
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.err.strip(), out

    return run


def assert_clean_failure(code: int, err: str, out, *needles: str) -> None:
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]


def test_missing_video(run_cli, tmp_path):
    assert_clean_failure(*run_cli(video=tmp_path / "nope.mp4"), "does not exist")


def test_missing_model_folder(demo, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    code = main(["edit", "--video", str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
                 "--prompt", "a dog", "--out", str(out), "--model", str(tmp_path / "no-such-model")])
    assert_clean_failure(code, capsys.readouterr().err.strip(), out, "model folder", "does not exist")


def test_corrupt_video(run_cli, tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    assert_clean_failure(*run_cli(video=bad), "corrupt.mp4")


def test_image_passed_as_video(run_cli, demo):
    assert_clean_failure(*run_cli(video=demo / "edited" / "kitten__dog.png"), "is an image, not a video")


def test_video_without_frames(run_cli, tmp_path):
    import av

    path = tmp_path / "audio_only.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert_clean_failure(*run_cli(video=path), "no video stream")


def test_unreadable_edited_frame(run_cli, tmp_path):
    bad = tmp_path / "frame.png"
    bad.write_text("not an image")
    assert_clean_failure(*run_cli(frame=bad), "not a readable image")


def test_rgba_and_odd_sized_edited_frame_is_fitted_and_reported(run_cli, tmp_path):
    rgba = Image.new("RGBA", (300, 200), (255, 0, 0, 0))
    rgba.paste((0, 255, 0, 255), (100, 50, 200, 150))
    path = tmp_path / "rgba.png"
    rgba.save(path)
    code, err, out = run_cli(frame=path)
    assert code == 0, err
    assert "composited onto the source first frame" in err
    assert "300x200; center-cropped and resized to 64x64" in err
    notes = json.loads(out.with_suffix(".json").read_text())["notes"]
    assert any("transparency" in note for note in notes)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--size", "60x64"], "multiple of 8"),
        (["--tau-conv", "1.5"], "tau_conv=1.5 is outside [0, 1]"),
        (["--tau-ta", "-0.1"], "tau_ta=-0.1 is outside [0, 1]"),
        (["--start-index", "10"], "start_index=10 is past the 10-step schedule"),
        (["--inversion-steps", "7"], "use inversion_steps in: 10, 20, 39-40"),
        (["--inversion-steps", "1000", "--steps", "50"], "use inversion_steps in: 50, 99-100"),
        (["--frames", "600"], "frames=600 must be between 2 and 512"),
    ],
)
def test_bad_settings(run_cli, flags, needle):
    assert_clean_failure(*run_cli(*flags), needle)


def test_existing_output_is_never_replaced(run_cli, tmp_path):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"user data")
    code, err, _ = run_cli(out=out)
    assert code == 1 and "already exists" in err
    assert out.read_bytes() == b"user data"


def test_not_enough_disk_for_the_cache(run_cli, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1024))
    assert_clean_failure(*run_cli(), "not enough disk space for the inversion cache", "--cache-max-gb 0")


def test_out_of_memory_says_what_to_lower(run_cli, monkeypatch):
    from anyv2v.backbone import Backbone

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Backbone, "unet_forward", exhausted)
    assert_clean_failure(*run_cli(), "out of GPU memory", "--frames", "--size", "--cpu-offload")


def test_cancelled_edit_writes_nothing(tiny_model, demo, tmp_path):
    from anyv2v.config import EditConfig
    from anyv2v.errors import CancelledError
    from anyv2v.pipeline import run_edit

    config = EditConfig(model=str(tiny_model), width=64, height=64, frames=4, steps=10, inversion_steps=10,
                        cache_dir=str(tmp_path / "cache"))
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "cancel.mp4"
    with pytest.raises(CancelledError):
        run_edit(demo / "kitten.mp4", demo / "edited" / "kitten__dog.png", "a dog", config, out, should_stop=stop_after_three)
    assert list(tmp_path.glob("cancel*")) == []
    assert list((tmp_path / "cache").glob("*.safetensors")) == []  # a partial inversion is not cached
