"""Bad input: one clear line, exit code 1, no traceback, nothing left behind."""

from __future__ import annotations

import json
import re

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


PROGRESS_BAR = re.compile(r"^[\w ]+:\s+\d+%\|")  # a tqdm bar of a stage that ran before the failure


def assert_clean_failure(code: int, err: str, out, *needles: str) -> None:
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.match(line)]
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
        (["--guidance", "nan"], "guidance=nan is not a finite number"),
        (["--guidance", "1e9"], "guidance=1e+09 is outside [0, 100]"),
        (["--start-time", "inf"], "start_time=inf is not a finite number"),
        (["--cache-max-gb", "nan"], "cache_max_gb=nan is not a finite number"),
        (["--tau-sa", "nan"], "tau_sa=nan is not a finite number"),
        (["--random-ratio=-inf"], "random_ratio=-inf is not a finite number"),
        (["--seed", "4294967296"], "seed=4294967296 is outside [0, 4294967295]"),
        (["--seed=-1"], "seed=-1 is outside [0, 4294967295]"),
        (["--steps", "5000"], "steps=5000 is outside [1, 1000]"),
        (["--inversion-steps", "1000000000"], "inversion_steps=1000000000 is outside [1, 1000]"),
        (["--fps", "0"], "fps=0 must be between 1 and 60"),
        (["--device", "tpu"], "device='tpu' is not a device this engine runs on; use cpu, cuda or cuda:N"),
        (["--decode-chunk-size", "0"], "decode_chunk_size=0 is outside [1, 512]"),
    ],
)
def test_bad_settings(run_cli, flags, needle):
    assert_clean_failure(*run_cli(*flags), needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_device(run_cli):
    assert_clean_failure(*run_cli("--device", "cuda"), "no CUDA GPU is available", "--device cpu")


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("steps: ten\n", "steps must be a whole number, got 'ten' (str)"),
        ("tau_conv: [1]\n", "tau_conv must be a number, got [1] (list)"),
        ("keep_audio: maybe\n", "keep_audio must be true or false, got 'maybe'"),
        ("seed: 1.5\n", "seed=1.5 must be a whole number"),
        ("guidance: .nan\n", "guidance=nan is not a finite number"),
        ("preset: 3\n", "preset must be one of paper, fast"),
        ("- a list\n", "must hold a mapping"),
        ("model: 12\n", "model must be text, got 12 (int)"),
    ],
)
def test_bad_yaml_values(run_cli, tmp_path, yaml_text, needle):
    config = tmp_path / "settings.yaml"
    config.write_text(yaml_text)
    assert_clean_failure(*run_cli("--config", str(config)), needle)


def test_one_frame_video_says_an_edit_needs_two(run_cli, tmp_path):
    import av

    path = tmp_path / "one.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")),
                       *stream.encode()]:
            container.mux(packet)
    assert_clean_failure(*run_cli(video=path), "one.mp4 gives only one frame", "a video edit needs at least 2 frames")


def test_editors_cli_with_another_models_folder_prints_one_line(tiny_model, demo, tmp_path, capsys):
    from editors.__main__ import main as editors_main

    out = tmp_path / "frame.png"
    code = editors_main(["run", "--editor", "instruct_pix2pix", "--model", str(tiny_model), "--image",
                         str(demo / "edited" / "kitten__dog.png"), "--instruction", "make it a dog",
                         "--width", "64", "--height", "64", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.splitlines() == [err] and err.startswith("error: ") and "Traceback" not in err
    assert f"could not run with model {tiny_model}" in err and "model for the instruct_pix2pix editor" in err
    assert not out.exists()


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
    assert_clean_failure(
        *run_cli(), "not enough disk space for the inversion cache", "plus a 64 MB safety margin", "0.0 MB are free",
        "--cache-max-gb 0",
    )


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
