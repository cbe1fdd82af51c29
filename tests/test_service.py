"""The app's job layer (`server`) called directly, without Gradio or a server."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anyv2v.config import DEFAULT_MODEL, PRESETS
from anyv2v.errors import AnyV2VError, CancelledError, ConfigError, OutOfMemoryError, VideoError
from anyv2v.schedule import check_inversion_steps
from anyv2v.tiny import I2VGEN_XL_SCHEDULER
from anyv2v.video import write_video
from server import jobs as gpu_jobs
from server import service as service_module
from server.checks import build_config, check_image_file, clip_frame_count
from server.examples import example_clip_settings, list_examples
from server.jobs import EngineProgress, gpu_slot, run_cancellable, zero_gpu
from server.messages import user_message
from server.presets import CHANGE_PRESETS, change_preset_of, derive_inversion_steps, valid_inversion_steps
from server.retention import prune_outputs
from server.service import EditService
from server.settings import AppSettings, check_model_source, parse_auth

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "data" / "demo" / "old_man.mp4"
EDITED = REPO.parent / "shared" / "data" / "demo" / "edited" / "old_man__robot.png"


def make_service(tmp_path: Path, **changes) -> EditService:
    settings = AppSettings(model=str(tmp_path / "model"), output_dir=str(tmp_path / "out"),
                           cache_dir=str(tmp_path / "cache"), **changes)
    return EditService(settings.check())


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """40 s of 64x64 video at 12 fps (480 frames), each frame a different grey."""
    frames = [Image.new("RGB", (64, 64), (i % 256,) * 3) for i in range(480)]
    return write_video(frames, tmp_path_factory.mktemp("clips") / "long.mp4", 12)


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------


def test_settings_from_env_defaults_and_overrides(tmp_path):
    default = AppSettings.from_env({})
    assert default.model == DEFAULT_MODEL and default.max_frames == 128 and default.preset in PRESETS
    assert default.auth is None and default.keep_hours == 24 and default.output_max_gb == 5
    env = {
        "ANYV2V_MODEL": str(tmp_path / "model"), "ANYV2V_DEVICE": "cpu", "ANYV2V_DTYPE": "float32",
        "ANYV2V_CPU_OFFLOAD": "1", "ANYV2V_CACHE_DIR": str(tmp_path / "cache"), "ANYV2V_OUTPUT_DIR": str(tmp_path / "o"),
        "ANYV2V_MAX_FRAMES": "32", "ANYV2V_PRESET": "paper", "ANYV2V_CLIP_CACHE_MB": "64",
        "ANYV2V_KEEP_HOURS": "2.5", "ANYV2V_OUTPUT_MAX_GB": "0.5", "ANYV2V_AUTH": "ann:pass:word",
    }
    settings = AppSettings.from_env(env).check()
    assert settings.model == env["ANYV2V_MODEL"] and settings.device == "cpu" and settings.cpu_offload
    assert (settings.max_frames, settings.clip_cache_mb, settings.keep_hours, settings.output_max_gb) == (32, 64, 2.5, 0.5)
    assert settings.auth == ("ann", "pass:word")  # the password may contain ':'
    config = settings.base_config()
    assert config.inversion_steps == 500 and config.cache_dir == env["ANYV2V_CACHE_DIR"]
    for bad in ({"ANYV2V_MAX_FRAMES": "many"}, {"ANYV2V_KEEP_HOURS": "nan"}, {"ANYV2V_AUTH": "nopassword"},
                {"ANYV2V_AUTH": ":pw"}, {"ANYV2V_AUTH": "user:"}):
        with pytest.raises(SystemExit):
            AppSettings.from_env(bad)
    for bad in ({"ANYV2V_PRESET": "turbo"}, {"ANYV2V_DEVICE": "tpu"}, {"ANYV2V_KEEP_HOURS": "0"}):
        with pytest.raises(SystemExit):
            AppSettings.from_env(bad).check()


def test_parse_auth():
    assert parse_auth(None) is None and parse_auth("  ") is None
    assert parse_auth("admin:s3cret") == ("admin", "s3cret")
    with pytest.raises(SystemExit, match="user:password"):
        parse_auth("admin")


def test_build_config_maps_values_and_keeps_defaults(tmp_path):
    settings = AppSettings(model="m", output_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    config = build_config(settings, frames=8.0, fps=8, width=64.0, height=64, tau_conv=1, tau_sa=0.5,
                                  tau_ta=1.0, start_index=1, steps=10.0, inversion_steps=10, seed=None)
    assert (config.frames, config.width, config.height, config.steps, config.start_index) == (8, 64, 64, 10, 1)
    assert isinstance(config.frames, int) and isinstance(config.steps, int)
    assert (config.model, config.cache_dir, config.seed) == ("m", str(tmp_path / "c"), 8888)
    assert build_config(settings).inversion_steps == 100  # the "fast" preset
    assert build_config(settings, frames=0).frames == 0  # the whole clip: checked while decoding


def test_build_config_errors_say_what_to_change(tmp_path):
    settings = AppSettings(output_dir=str(tmp_path), max_frames=32, max_size=512)
    cases = [
        (dict(frames=64), "at most 32 frames"),
        (dict(start_time=0, end_time=10, fps=8), "at most 32 frames"),
        (dict(width=1024), "larger than this app allows"),
        (dict(tau_conv=1.5), "tau_conv"),
        (dict(frames=8.5), "whole number"),
        (dict(start_time=2, end_time=1), "after the start time"),
        (dict(guidance=float("nan")), "finite"),
        (dict(seed=2**32), "seed 4294967296 is outside 0..4294967295"),
        (dict(seed=-1), "outside 0"),
        (dict(start_time=-1), "0 or more"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_config(settings, **values)


def test_clip_frame_count_from_time_range():
    assert clip_frame_count(16, 8, 0.0, None, 128) == 16
    assert clip_frame_count(16, 8, 0.0, 0, 128) == 16  # 0 = no end time
    assert clip_frame_count(16, 8, 0.5, 2.5, 128) == 16
    assert clip_frame_count(16, 10, 1.0, 1.3, 128) == 3
    with pytest.raises(ConfigError, match="fewer than 2 frames"):
        clip_frame_count(16, 8, 1.0, 1.1, 128)


# ---------------------------------------------------------------------------------------------------------
# 1. Long inputs never decode whole: the app's own limit, quoted
# ---------------------------------------------------------------------------------------------------------


def test_whole_clip_over_the_app_limit_is_refused_early(tmp_path, long_clip, monkeypatch):
    import anyv2v.pipeline as pipeline

    fitted = []
    real_fitter = pipeline.frame_fitter

    def counting_fitter(*args, **kwargs):
        fit = real_fitter(*args, **kwargs)
        return lambda image, size: fitted.append(1) or fit(image, size)

    monkeypatch.setattr(pipeline, "frame_fitter", counting_fitter)
    jobs = make_service(tmp_path, max_frames=20)
    config = build_config(jobs.settings, frames=0, fps=12, width=64, height=64)
    with pytest.raises(VideoError, match="the limit is 20"):
        jobs.prepare(str(long_clip), config)
    assert len(fitted) <= 21  # never the 480 frames of the clip
    assert jobs.clips.nbytes == 0 and len(jobs.clips) == 0
    # Within the limit the same whole-clip request works.
    short = build_config(jobs.settings, frames=0, fps=12, width=64, height=64, end_time=1.0)
    assert len(jobs.prepare(str(long_clip), short).prepared.frames) == 12


# ---------------------------------------------------------------------------------------------------------
# 2. Bounded memory: the prepared-clip cache holds working-size frames, bounded in bytes
# ---------------------------------------------------------------------------------------------------------


def test_clip_cache_is_bounded_in_bytes_of_working_size_frames(tmp_path):
    jobs = make_service(tmp_path, clip_cache_mb=1)  # 1 MiB: one 16-frame 128x128 clip (786 KB)
    first = jobs.prepare(str(CLIP), build_config(jobs.settings, frames=16, width=128, height=128))
    assert first.prepared.size == (128, 128) and all(f.size == (128, 128) for f in first.prepared.frames)
    assert first.nbytes == 16 * 128 * 128 * 3 and jobs.clips.nbytes == first.nbytes
    second = jobs.prepare(str(CLIP), build_config(jobs.settings, frames=16, width=128, height=128, fps=4))
    assert jobs.clips.nbytes == second.nbytes <= 2**20 and len(jobs.clips) == 1  # the older clip went
    big = jobs.prepare(str(CLIP), build_config(jobs.settings, frames=16, width=256, height=256))
    assert len(big.prepared.frames) == 16  # used for its request...
    assert jobs.clips.nbytes <= 2**20  # ...but not kept: it alone is over the budget
    again = jobs.prepare(str(CLIP), build_config(jobs.settings, frames=16, width=128, height=128, fps=4))
    assert again is second  # a cache hit


# ---------------------------------------------------------------------------------------------------------
# 7. Retention: age and size limits, no previews for the API, stale partial files swept at start
# ---------------------------------------------------------------------------------------------------------


def _file(path: Path, size: int, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_frame_count_messages_quote_the_apps_limit(tmp_path):
    settings = AppSettings(output_dir=str(tmp_path), max_frames=128)
    for frames in (-1, 1):
        with pytest.raises(ConfigError, match=rf"frames={frames} must be between 2 and 128 \(or 0 for the whole"):
            build_config(settings, frames=frames)
    with pytest.raises(ConfigError, match="at most 128 frames"):
        build_config(settings, frames=129)
    assert build_config(settings, frames=0).frames == 0  # the whole clip, limited while decoding


def test_prune_outputs_by_age_and_total_size(tmp_path):
    old = _file(tmp_path / "old-edit-0123abcd.mp4", 100, 3 * 3600)
    mid = _file(tmp_path / "frames" / "first-frame-manual-0123456789.png", 400, 600)
    new = _file(tmp_path / "clips" / "clip-abcdef0123.mp4", 400, 60)
    newest = _file(tmp_path / "new-edit-89abcdef.mp4", 400, 1)
    removed = prune_outputs(tmp_path, max_age_s=3600, max_bytes=900, keep=[newest])
    assert set(removed) == {old, mid}  # too old, then the oldest until 800 bytes <= 900 remain
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["clip-abcdef0123.mp4", "new-edit-89abcdef.mp4"]
    assert prune_outputs(tmp_path, max_age_s=3600, max_bytes=0, keep=[newest, new]) == []


def test_retention_touches_only_the_apps_own_files_and_never_follows_links(tmp_path):
    """The CLI's results and an operator's files in the same output folder, old and new, survive; so do files
    with other names in the app's folder and whatever a link points at."""
    out = tmp_path / "out"
    day = 48 * 3600
    foreign = [
        _file(out / "kitten-edit-0123abcd.mp4", 10, day),  # the CLI's result: an app-like name, old
        _file(out / "kitten-edit-0123abcd.json", 10, day),
        _file(out / "notes.txt", 10, day),
        _file(out / "frames" / "first-frame-manual-0123456789.png", 10, day),  # outside the app's folder
        _file(out / "new-edit-89abcdef.mp4", 10, 1),
    ]
    app_dir = out / "anyv2v-app"
    mine_old = _file(app_dir / "kitten-edit-fedcba98.mp4", 10, day)
    mine_empty = _file(app_dir / "frames" / "first-frame-nst-0123456789.png", 0, 10)
    mine_part = _file(app_dir / ".clip-0123456789-ab12cd34.mp4.part", 10, 10)
    operator = [_file(app_dir / "my-notes.txt", 10, day), _file(app_dir / "photo.png", 10, day),
                _file(app_dir / "archive" / "old-edit-0123abcd.mp4", 10, day)]
    elsewhere = _file(tmp_path / "precious" / "keep-edit-0123abcd.mp4", 10, day)
    (app_dir / "linked-edit-01234567.mp4").symlink_to(elsewhere)
    (app_dir / "clips").symlink_to(elsewhere.parent, target_is_directory=True)
    jobs = make_service(tmp_path, output_max_gb=1e-9)  # and every byte over the budget
    assert jobs.output_dir == app_dir.resolve() and (app_dir / "README.txt").is_file()
    assert not mine_old.exists() and not mine_empty.exists() and not mine_part.exists()
    for path in (*foreign, *operator, elsewhere):
        assert path.is_file(), path
    assert (app_dir / "linked-edit-01234567.mp4").is_symlink()
    jobs.prune()
    for path in (*foreign, *operator, elsewhere):
        assert path.is_file(), path


def test_service_start_sweeps_stale_partial_and_empty_files(tmp_path):
    out = tmp_path / "out" / "anyv2v-app"
    part = _file(out / ".anyv2v-x-0123abcd-k2j4h5g6.mp4.part", 1000, 10)
    empty = _file(out / "frames" / "first-frame-manual-0123456789.png", 0, 10)
    kept = _file(out / "anyv2v-1-0123abcd.mp4", 1000, 10)
    ancient = _file(out / "anyv2v-2-0123abcd.mp4", 1000, 48 * 3600)
    make_service(tmp_path)
    assert not part.exists() and not empty.exists() and not ancient.exists()
    assert kept.exists()


def test_full_disk_while_writing_candidates_leaves_no_file(tmp_path, monkeypatch):
    """Disk full in the middle of the second candidate: no cut-off PNG, no temp file, and not the first one
    either (the message says nothing was written)."""
    jobs = make_service(tmp_path)
    frame = Image.new("RGB", (64, 64), (10, 200, 30))
    monkeypatch.setattr(service_module, "gpu_edit_frame", lambda *a, **k: [frame, frame, frame])
    real_save = Image.Image.save
    calls = []

    def save(self, fp, format=None, **params):
        calls.append(fp)
        if len(calls) == 2:  # half a PNG reaches the disk, then it is full
            with open(fp, "wb") as handle:
                handle.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, format=format, **params)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(OSError) as info:
        jobs.edit_frame("manual", frame, {"image": frame}, 3, None, threading.Event())
    assert "out of disk space" in user_message(info.value, "editing the first frame")[0]
    assert [p for p in jobs.output_dir.rglob("*") if p.is_file() and p.name != "README.txt"] == []
    # The page's first frame PNG is published whole too.
    calls.clear()
    config = build_config(jobs.settings, frames=4, width=64, height=64)
    calls.append("first")  # the next save is the second call: it fails
    with pytest.raises(OSError):
        jobs.prepare(str(CLIP), config, previews=True)
    assert not [p for p in (jobs.output_dir / "clips").glob("*.png")]
    assert not [p for p in jobs.output_dir.rglob("*.part")]


def test_api_style_prepare_writes_no_preview_files(tmp_path):
    jobs = make_service(tmp_path)
    config = build_config(jobs.settings, frames=4, width=64, height=64)
    entry = jobs.prepare(str(CLIP), config)
    written = [p for p in jobs.output_dir.rglob("*") if p.is_file() and p.name != "README.txt"]
    assert entry.preview_path is None and not written
    page = jobs.prepare(str(CLIP), config, previews=True)  # the page shows a preview and the first frame
    assert Path(page.preview_path).is_file() and Path(page.first_frame_path).is_file()
    with Image.open(page.first_frame_path) as image:
        assert image.size == (64, 64)


# ---------------------------------------------------------------------------------------------------------
# 11. Unreadable images: one clear message
# ---------------------------------------------------------------------------------------------------------


def test_unreadable_images_get_one_clear_message(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGBA", (32, 32)).save(good)
    assert check_image_file(str(good)) == str(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path in (truncated, noise, CLIP):
        with pytest.raises(VideoError, match=rf"{path.name} is not a readable image \(\w+\); use a PNG"):
            check_image_file(str(path), "edited first frame")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(bomb)  # 25 megapixels in a few KB
    with pytest.raises(VideoError, match="bomb.png is 5000x5000 pixels; the edited first frame may have at most 4096x4096"):
        check_image_file(str(bomb), "edited first frame")
    with pytest.raises(VideoError, match="no image was given"):
        check_image_file(None)


def test_user_messages_are_one_line_without_traceback(caplog):
    text, expected = user_message(VideoError("/tmp/gradio/abc/clip.mp4 is not a readable video."), "x",
                                          ["/tmp/gradio/abc/clip.mp4"])
    assert text == "clip.mp4 is not a readable video." and expected
    assert "Lower the number of frames" in user_message(OutOfMemoryError("oom"), "x")[0]
    assert "Cancelled" in user_message(CancelledError("stop"), "x")[0]
    disk = user_message(OSError(errno.ENOSPC, "No space left on device"), "editing the video")[0]
    assert "out of disk space" in disk and "frames" not in disk
    with caplog.at_level("ERROR", logger="anyv2v.app"):
        try:
            raise KeyError("internal detail")
        except KeyError as exc:
            unexpected, expected = user_message(exc, "editing the video")
    assert not expected and "Something went wrong while editing the video" in unexpected
    assert "internal detail" not in unexpected and "Traceback" in caplog.text  # details in the server log


# ---------------------------------------------------------------------------------------------------------
# What a non-programmer meets: steps that cannot be wrong, presets that follow the sliders, estimates
# ---------------------------------------------------------------------------------------------------------


def test_inversion_steps_derived_from_any_sampling_steps_are_valid():
    config = dict(I2VGEN_XL_SCHEDULER)
    with pytest.raises(ConfigError):  # the old app's fixed 100 inversion steps with 37 sampling steps
        check_inversion_steps(config, 37, 100)
    for steps in (1, 7, 10, 25, 37, 50, 51, 99, 137, 200):
        derived = derive_inversion_steps(config, steps, 100)
        check_inversion_steps(config, steps, derived)  # never raises
        assert derived in valid_inversion_steps(config, steps)
    assert derive_inversion_steps(config, 50, 100) == 100  # the preset's own value when it is valid
    assert derive_inversion_steps(config, 50, 500) == 500


def test_change_presets_follow_the_sliders():
    assert change_preset_of(0.2, 0.2, 0.5, 0) == "default"
    assert change_preset_of(1, 1, 1, 0) == "subtle"
    assert change_preset_of(0.1, 0.1, 1.0, 0) == "strong"
    assert change_preset_of(0.3, 0.2, 0.5, 0) == "custom"
    assert change_preset_of(None, 0.2, 0.5, 0) == "custom"
    # The presets are settings the paper or the reference tuned (shared/data/demo/manifest.json).
    import json

    manifest = json.loads((CLIP.parent / "manifest.json").read_text())
    tuned = {(e["tau_conv"], e["tau_sa"], e["tau_ta"], e["start_index"]) for e in manifest["edits"]}
    for values in CHANGE_PRESETS.values():
        assert (values["tau_conv"], values["tau_sa"], values["tau_ta"], values["start_index"]) in tuned


def test_engine_progress_one_bar_with_time_left_and_loading_only_when_loading():
    now = [0.0]
    reports: list[tuple[float, str]] = []
    tracker = EngineProgress(lambda f, t: reports.append((f, t)), 10, 10, clock=lambda: now[0])
    tracker.start(loading=True)
    assert "Loading the model" in reports[-1][1]
    for i in range(1, 11):
        now[0] += 1.0
        tracker("inversion", i, 10)
    assert "step 10 of 10" in reports[-1][1] and "left" in reports[-1][1]
    for i in range(1, 11):
        now[0] += 3.0
        tracker("sampling", i, 10)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    # After sampling step 2: 15 s since the first step for 15 of 40 units (sampling weighs 3), 24 units left.
    assert "about 24 s left" in reports[12][1]
    quiet: list[tuple[float, str]] = []
    EngineProgress(lambda f, t: quiet.append((f, t)), 10, 10).start(loading=False)
    assert "Loading" not in quiet[0][1]

    cached: list[tuple[float, str]] = []
    tracker = EngineProgress(lambda f, t: cached.append((f, t)), 10, 4)
    tracker("inversion_cached", 1, 1)
    tracker("sampling", 2, 4)
    assert tracker.reused_inversion and "Reused the cached inversion" in cached[0][1]
    assert cached[1][0] == pytest.approx(0.5)


def test_examples_and_their_small_settings_on_cpu():
    examples = list_examples(REPO / "assets" / "demo")
    assert len(examples) == 10 and all(Path(e.video).is_file() and Path(e.edited_frame).is_file() for e in examples)
    starry = next(e for e in examples if "starry" in e.edited_frame)
    assert starry.start_index == 1 and "starry night" in starry.prompt
    assert list_examples(Path("/nonexistent")) == []
    small = example_clip_settings(AppSettings(device="cpu"))
    assert small == {"frames": 8, "fps": 8, "width": 256, "height": 256, "steps": 10}


def test_clip_summary_shows_the_short_clip_note(tmp_path):
    jobs = make_service(tmp_path)
    entry = jobs.prepare(str(CLIP), build_config(jobs.settings, frames=64, fps=8, width=64, height=64))
    assert len(entry.prepared.frames) == 16  # the demo clip has 16 frames at 8 fps
    assert "16 frames at 8 fps" in entry.summary and "Note: the clip has only 16 frames" in entry.summary


def test_model_source_check_says_what_to_do(tmp_path, tiny_model, monkeypatch):
    assert check_model_source(str(tiny_model)) is None
    missing = check_model_source(str(tmp_path / "nowhere"))
    assert "does not exist" in missing and "make-tiny-model" in missing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    offline = check_model_source("someone/not-downloaded")
    assert "HF_HUB_OFFLINE" in offline and "network" in offline and "make-tiny-model" in offline


# ---------------------------------------------------------------------------------------------------------
# Jobs: cancel and the GPU slot
# ---------------------------------------------------------------------------------------------------------


def test_run_cancellable_sets_the_stop_flag_when_cancelled():
    seen = threading.Event()

    def job(stop: threading.Event) -> str:
        for _ in range(200):
            if stop.is_set():
                seen.set()
                return "stopped"
            time.sleep(0.01)
        return "finished"

    async def scenario() -> None:
        task = asyncio.ensure_future(run_cancellable(job))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert seen.wait(2)


def test_gpu_slot_is_exclusive_and_cancellable():
    stop = threading.Event()
    with gpu_slot(stop):
        other = threading.Event()
        other.set()
        with pytest.raises(CancelledError):
            with gpu_slot(other):
                pass
    with gpu_slot(stop):
        pass


def test_zero_gpu_decorates_only_when_spaces_is_present(monkeypatch):
    def work() -> str:
        return "ran"

    monkeypatch.setattr(gpu_jobs, "spaces", None)
    assert zero_gpu(work) is work
    calls = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration: int):
            calls.append(duration)
            return lambda fn: (lambda *a, **k: "on zero gpu: " + fn(*a, **k))

    monkeypatch.setattr(gpu_jobs, "spaces", FakeSpaces)
    monkeypatch.setenv("ANYV2V_GPU_DURATION", "120")
    assert zero_gpu(work)() == "on zero gpu: ran" and calls == [120]


def test_unavailable_editor_says_what_to_install(tmp_path, monkeypatch):
    import editors

    manual = editors.get_editor("manual")
    monkeypatch.setattr(type(manual), "unavailable_reason", lambda self, model=None: "install the foo package")
    jobs = make_service(tmp_path)
    with pytest.raises(AnyV2VError, match="install the foo package"):
        jobs.edit_frame("manual", Image.new("RGB", (64, 64)), {"image": str(EDITED)}, 1, None, threading.Event())
