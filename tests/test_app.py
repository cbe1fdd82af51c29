"""The Gradio app: pure helpers without a server, then the public API through gradio_client against
`python app.py` serving tiny local models on localhost."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.app_helpers import CLIP, EDITED, PROMPT, TINY_EDIT, make_models, read_mp4, run_app

import app as webapp
from anyv2v.config import DEFAULT_MODEL, PRESETS
from anyv2v.errors import AnyV2VError, CancelledError, ConfigError, OutOfMemoryError, VideoError

# ---------------------------------------------------------------------------------------------------------
# Helpers, no server
# ---------------------------------------------------------------------------------------------------------


def test_settings_from_env_defaults_and_overrides(tmp_path):
    default = webapp.AppSettings.from_env({})
    assert default.model == DEFAULT_MODEL
    assert default.max_frames == 128 and default.preset in PRESETS
    env = {
        "ANYV2V_MODEL": str(tmp_path / "model"),
        "ANYV2V_DEVICE": "cpu",
        "ANYV2V_DTYPE": "float32",
        "ANYV2V_CPU_OFFLOAD": "1",
        "ANYV2V_CACHE_DIR": str(tmp_path / "cache"),
        "ANYV2V_OUTPUT_DIR": str(tmp_path / "out"),
        "ANYV2V_MAX_FRAMES": "32",
        "ANYV2V_PRESET": "paper",
    }
    settings = webapp.AppSettings.from_env(env).check()
    assert settings.model == env["ANYV2V_MODEL"] and settings.device == "cpu" and settings.cpu_offload
    assert settings.max_frames == 32 and settings.output_dir == env["ANYV2V_OUTPUT_DIR"]
    config = settings.base_config()
    assert config.inversion_steps == 500 and config.cache_dir == env["ANYV2V_CACHE_DIR"]
    with pytest.raises(SystemExit):
        webapp.AppSettings.from_env({"ANYV2V_MAX_FRAMES": "many"})
    with pytest.raises(SystemExit):
        webapp.AppSettings.from_env({"ANYV2V_PRESET": "turbo"}).check()


def test_cli_defaults_listen_on_localhost(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = webapp.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = webapp.parse_args(["--host", "0.0.0.0", "--port", "9000", "--share", "--queue-size", "3",
                              "--max-upload-mb", "5", "--output-dir", "x"])
    assert (args.host, args.port, args.share, args.queue_size, args.max_upload_mb, args.output_dir) == (
        "0.0.0.0", 9000, True, 3, 5, "x")


def test_build_config_maps_ui_values_and_keeps_defaults(tmp_path):
    settings = webapp.AppSettings(model="m", output_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    config = webapp.build_config(
        settings, frames=8.0, fps=8, width=64.0, height=64, tau_conv=1, tau_sa=0.5, tau_ta=1.0, start_index=1,
        steps=10.0, inversion_steps=10, seed=None, negative_prompt=None,
    )
    assert (config.frames, config.width, config.height, config.steps, config.start_index) == (8, 64, 64, 10, 1)
    assert isinstance(config.frames, int) and isinstance(config.steps, int)
    assert (config.model, config.cache_dir, config.seed) == ("m", str(tmp_path / "c"), 8888)
    assert config.inversion_steps == 10 and config.tau_conv == 1.0
    # The preset gives what the request leaves out.
    assert webapp.build_config(settings).inversion_steps == PRESETS[settings.preset].get("inversion_steps", 500)


def test_build_config_errors_say_what_to_change(tmp_path):
    settings = webapp.AppSettings(output_dir=str(tmp_path), max_frames=32, max_size=512)
    with pytest.raises(ConfigError, match="at most 32 frames"):
        webapp.build_config(settings, frames=64)
    with pytest.raises(ConfigError, match="at most 32 frames"):
        webapp.build_config(settings, start_time=0, end_time=10, fps=8)  # 80 frames from the time range
    with pytest.raises(ConfigError, match="larger than this app allows"):
        webapp.build_config(settings, width=1024)
    with pytest.raises(ConfigError, match="tau_conv"):
        webapp.build_config(settings, tau_conv=1.5)
    with pytest.raises(ConfigError, match="whole number"):
        webapp.build_config(settings, frames=8.5)
    with pytest.raises(ConfigError, match="after the start time"):
        webapp.build_config(settings, start_time=2, end_time=1)


def test_clip_frame_count_from_time_range():
    assert webapp.clip_frame_count(16, 8, 0.0, None, 128) == 16
    assert webapp.clip_frame_count(16, 8, 0.0, 0, 128) == 16  # 0 = no end time
    assert webapp.clip_frame_count(16, 8, 0.5, 2.5, 128) == 16
    assert webapp.clip_frame_count(16, 10, 1.0, 1.3, 128) == 3
    with pytest.raises(ConfigError, match="fewer than 2 frames"):
        webapp.clip_frame_count(16, 8, 1.0, 1.1, 128)


def test_engine_progress_maps_stages_to_one_bar():
    reports: list[tuple[float, str]] = []
    tracker = webapp.EngineProgress(lambda f, t: reports.append((f, t)), inversion_steps=10, sampling_steps=10)
    tracker.start()
    for i in range(1, 11):
        tracker("inversion", i, 10)
    for i in range(1, 11):
        tracker("sampling", i, 10)
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert "inverting the source video" in reports[1][1] and "step 1 of 10" in reports[1][1]
    assert "sampling" in reports[11][1]
    assert not tracker.reused_inversion

    cached: list[tuple[float, str]] = []
    tracker = webapp.EngineProgress(lambda f, t: cached.append((f, t)), inversion_steps=10, sampling_steps=4)
    tracker("inversion_cached", 1, 1)  # what the engine reports when the inversion came from the cache
    tracker("sampling", 2, 4)
    assert tracker.reused_inversion
    assert "Reused the cached inversion" in cached[0][1]
    assert cached[1][0] == pytest.approx(0.5)  # the skipped inversion no longer counts


def test_edit_status_mentions_reused_inversion():
    from anyv2v.pipeline import EditResult

    result = EditResult(Path("a.mp4"), Path("a.json"), True, {}, {"sampling": 2.0, "load": 0.01}, ["n1"], 8, (64, 64), 8)
    text = webapp.edit_status(result)
    assert "Reused the cached inversion" in text and "8 frames, 64×64, 8 fps" in text and "n1" in text
    fresh = webapp.edit_status(EditResult(Path("a.mp4"), Path("a.json"), False, {}, {"inversion": 3.0}, [], 8, (64, 64), 8))
    assert "Inverted the source video" in fresh and "reuse" in fresh


def test_examples_come_from_the_assets_manifest():
    examples = webapp.list_examples()
    assert len(examples) == 10
    first = examples[0]
    assert Path(first.video).is_file() and Path(first.edited_frame).is_file()
    assert Path(first.video).resolve().is_relative_to(webapp.ASSETS_DIR)
    assert (first.tau_conv, first.tau_sa, first.tau_ta, first.start_index) == (1.0, 1.0, 1.0, 0)
    starry = next(e for e in examples if "starry" in e.edited_frame)
    assert starry.start_index == 1 and "starry night" in starry.prompt
    assert len(first.row()) == 7
    assert webapp.list_examples(Path("/nonexistent")) == []


def test_user_errors_are_one_line_without_traceback(caplog):
    err = webapp.user_error(VideoError("/tmp/gradio/abc123/clip.mp4 is not a readable video."), "x",
                            ["/tmp/gradio/abc123/clip.mp4"])
    assert "clip.mp4 is not a readable video" in err.message and "/tmp/gradio" not in err.message
    oom = webapp.user_error(OutOfMemoryError("out of GPU memory; lower --frames"), "x")
    assert "Lower the number of frames or the size" in oom.message
    assert "Cancelled" in webapp.user_error(CancelledError("stop"), "x").message
    assert webapp.user_error(AnyV2VError("a <b> tag"), "x").message == "A &lt;b&gt; tag"
    with caplog.at_level("ERROR", logger="anyv2v.app"):
        try:
            raise KeyError("internal detail")
        except KeyError as exc:
            unexpected = webapp.user_error(exc, "editing the video")
    assert "Something went wrong while editing the video" in unexpected.message
    assert "internal detail" not in unexpected.message and "Traceback" not in unexpected.message
    assert "Traceback" in caplog.text  # the details go to the server log


def test_run_cancellable_sets_the_stop_flag_when_gradio_cancels():
    seen = threading.Event()

    def job(stop: threading.Event) -> str:
        for _ in range(200):
            if stop.is_set():
                seen.set()
                return "stopped"
            time.sleep(0.01)
        return "finished"

    async def scenario() -> None:
        task = asyncio.ensure_future(webapp.run_cancellable(job))
        await asyncio.sleep(0.1)
        task.cancel()  # what Gradio does on the Cancel button or a client's job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert seen.wait(2)


def test_gpu_slot_is_exclusive_and_cancellable():
    stop = threading.Event()
    with webapp.gpu_slot(stop):
        other = threading.Event()
        other.set()
        with pytest.raises(CancelledError):
            with webapp.gpu_slot(other):
                pass
    with webapp.gpu_slot(stop):  # released again
        pass


def test_zero_gpu_decorates_only_when_spaces_is_present(monkeypatch):
    def work() -> str:
        return "ran"

    monkeypatch.setattr(webapp, "spaces", None)
    assert webapp._zero_gpu(work) is work
    calls = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration: int):
            calls.append(duration)
            return lambda fn: (lambda *a, **k: "on zero gpu: " + fn(*a, **k))

    monkeypatch.setattr(webapp, "spaces", FakeSpaces)
    monkeypatch.setenv("ANYV2V_GPU_DURATION", "120")
    assert webapp._zero_gpu(work)() == "on zero gpu: ran" and calls == [120]


def test_api_editor_params_union():
    import editors

    available = editors.available_editors()
    params = {p.name: p for p in webapp.api_editor_params(available)}
    for editor in available.values():
        for spec in editor.inputs:
            assert any(p.targets.get(editor.name) == spec.name for p in params.values())
    assert not set(params) & set(webapp.FIRST_FRAME_API_PARAMS)
    if "steps" in params and len(params["steps"].targets) > 1:
        assert params["steps"].default is None  # editors disagree: each keeps its own default
    manual = available["manual"]
    values = webapp.editor_values(manual, list(params.values()), {"image": "x.png", "instruction": "ignored"})
    assert values == {"image": "x.png"}


def test_build_app_wires_queue_and_endpoints(tmp_path):
    settings = webapp.AppSettings(model=str(tmp_path / "m"), output_dir=str(tmp_path / "out"), queue_size=5)
    demo = webapp.build_app(settings)
    assert demo._queue.max_size == 5
    named = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert set(named) == {"edit_first_frame", "edit_video"}
    for fn in named.values():
        assert fn.concurrency_limit == 1 and fn.concurrency_id == webapp.GPU_CONCURRENCY_ID
    kwargs = webapp.launch_kwargs(settings)
    assert kwargs["max_file_size"] == settings.max_upload_mb * 1024 * 1024
    assert str(Path(settings.output_dir).resolve()) in kwargs["allowed_paths"]


# ---------------------------------------------------------------------------------------------------------
# The real server through gradio_client
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_api")
    env = make_models(root / "models", ip2p=True)
    with run_app(root, env, ("--max-upload-mb", "1", "--queue-size", "4")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(server.output_dir.parent / "downloads"))


def test_view_api_lists_both_endpoints(client):
    info = client.view_api(print_info=False, return_format="dict")
    endpoints = info["named_endpoints"]
    assert set(endpoints) == {"/edit_first_frame", "/edit_video"}
    video_params = [p["parameter_name"] for p in endpoints["/edit_video"]["parameters"]]
    assert video_params[:3] == ["video", "edited_frame", "prompt"]
    for name in ("tau_conv", "tau_sa", "tau_ta", "start_index", "steps", "inversion_steps", "guidance",
                 "negative_prompt", "seed", "frames", "fps", "width", "height"):
        assert name in video_params
    optional = {p["parameter_name"] for p in endpoints["/edit_video"]["parameters"] if p["parameter_has_default"]}
    assert "tau_conv" in optional and "video" not in optional
    frame_params = [p["parameter_name"] for p in endpoints["/edit_first_frame"]["parameters"]]
    assert frame_params[:2] == ["video", "editor"] and "image" in frame_params and "instruction" in frame_params


def test_edit_first_frame_manual(client):
    from gradio_client import handle_file

    paths = client.predict(
        video=handle_file(str(CLIP)), editor="manual", image=handle_file(str(EDITED)), width=64, height=64,
        api_name="/edit_first_frame",
    )
    assert len(paths) == 1
    with Image.open(paths[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_edit_first_frame_missing_input_is_actionable(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Edited frame is required"):
        client.predict(video=handle_file(str(CLIP)), editor="manual", width=64, height=64,
                       api_name="/edit_first_frame")
    with pytest.raises(AppError, match="is an image, not a video"):
        client.predict(video=handle_file(str(EDITED)), editor="manual", image=handle_file(str(EDITED)),
                       api_name="/edit_first_frame")


def test_upload_limit_is_enforced_by_the_server(server, tmp_path):
    import httpx

    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (1024 * 1024 + 1))  # the server runs with --max-upload-mb 1
    with big.open("rb") as handle:
        response = httpx.post(server.url + "gradio_api/upload", files={"files": ("big.mp4", handle, "video/mp4")})
    assert response.status_code == 413
    with CLIP.open("rb") as handle:
        response = httpx.post(server.url + "gradio_api/upload", files={"files": ("clip.mp4", handle, "video/mp4")})
    assert response.status_code == 200


def test_edit_first_frame_instruct_pix2pix_candidates(client):
    from gradio_client import handle_file

    paths = client.predict(
        video=handle_file(str(CLIP)), editor="instruct_pix2pix", instruction="turn the man into a robot",
        steps=2, candidates=2, width=64, height=64, api_name="/edit_first_frame",
    )
    assert len(paths) == 2
    images = [Image.open(p).convert("RGB") for p in paths]
    assert all(image.size == (64, 64) for image in images)
    assert images[0].tobytes() != images[1].tobytes()  # seed and seed + 1


def test_edit_video_twice_reuses_the_inversion(client, server):
    from gradio_client import handle_file

    def edit(**extra):
        result = client.predict(
            video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
            api_name="/edit_video", **{**TINY_EDIT, **extra},
        )
        assert result.endswith(".mp4")
        frames, size, fps = read_mp4(result)
        assert (frames, size, fps) == (8, (64, 64), 8.0)
        record = json.loads((server.output_dir / Path(result).with_suffix(".json").name).read_text())
        return record

    first = edit()
    assert first["inversion_from_cache"] is False and first["unet_calls"]["inversion"] == 10
    assert first["settings"]["tau_conv"] == 0.2 and first["prompt"] == PROMPT
    second = edit(tau_conv=1.0, tau_sa=1.0, tau_ta=1.0)
    assert second["inversion_from_cache"] is True and second["unet_calls"]["inversion"] == 0
    assert second["output"] != first["output"]  # unique names, nothing overwritten
    assert second["settings"]["tau_conv"] == 1.0


def test_cancel_stops_the_engine_between_steps(client, server):
    from gradio_client import handle_file

    before = set(server.output_dir.glob("anyv2v-*.mp4"))
    job = client.submit(
        video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT, api_name="/edit_video",
        **{**TINY_EDIT, "inversion_steps": 100, "seed": 4242},  # long enough to cancel midway
    )
    deadline = time.monotonic() + 120
    while "inverting the source video" not in str(job.status().progress_data):
        assert time.monotonic() < deadline and not job.done(), "the edit never reported inversion progress"
        time.sleep(0.1)
    job.cancel()
    deadline = time.monotonic() + 60
    while "video edit stopped after a cancel" not in server.log():
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.2)
    assert set(server.output_dir.glob("anyv2v-*.mp4")) == before  # nothing written


def test_edit_video_errors_are_actionable(client, server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "holiday.mp4"
    bad.write_text("not a video at all\n")
    with pytest.raises(AppError) as info:
        client.predict(video=handle_file(str(bad)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
                       api_name="/edit_video", **TINY_EDIT)
    message = str(info.value)
    assert "holiday.mp4 is not a readable video" in message and "Traceback" not in message
    assert "/gradio/" not in message  # no server paths

    with pytest.raises(AppError, match="at most 128 frames"):
        client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
                       api_name="/edit_video", **{**TINY_EDIT, "frames": 500})
    with pytest.raises(AppError, match="inversion_steps"):
        client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
                       api_name="/edit_video", **{**TINY_EDIT, "inversion_steps": 7})
    assert "unexpected error" not in server.log()
