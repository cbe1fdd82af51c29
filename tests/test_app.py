"""The Gradio app: pure helpers without a server, then the public API through gradio_client against
`python app.py` serving tiny local models on localhost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app_helpers import CLIP, EDITED, PROMPT, TINY_EDIT, jpeg_variants, make_models, read_mp4, run_app

import app as webapp
from anyv2v.errors import AnyV2VError
from server.editor_params import FIRST_FRAME_API_PARAMS, api_editor_params, editor_values
from server.settings import AppSettings
from ui.widgets import user_error

# ---------------------------------------------------------------------------------------------------------
# The page and its wiring, no server (the job layer has its own tests: tests/test_service.py)
# ---------------------------------------------------------------------------------------------------------


def test_cli_defaults_listen_on_localhost(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = webapp.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = webapp.parse_args(["--host", "0.0.0.0", "--port", "9000", "--share", "--queue-size", "3",
                              "--max-upload-mb", "5", "--output-dir", "x"])
    assert (args.host, args.port, args.share, args.queue_size, args.max_upload_mb, args.output_dir) == (
        "0.0.0.0", 9000, True, 3, 5, "x")


def test_user_error_is_escaped_and_never_a_traceback():
    assert user_error(AnyV2VError("a <b> tag"), "x").message == "A &lt;b&gt; tag"
    err = user_error(KeyError("internal"), "editing the video")
    assert "Something went wrong" in err.message and "internal" not in err.message


def test_api_editor_params_union():
    import editors

    available = editors.available_editors()
    params = {p.name: p for p in api_editor_params(available)}
    for editor in available.values():
        for spec in editor.inputs:
            assert any(p.targets.get(editor.name) == spec.name for p in params.values())
    assert not set(params) & set(FIRST_FRAME_API_PARAMS)
    if "steps" in params and len(params["steps"].targets) > 1:
        assert params["steps"].default is None  # editors disagree: each keeps its own default
    manual = available["manual"]
    values = editor_values(manual, list(params.values()), {"image": "x.png", "instruction": "ignored"})
    assert values == {"image": "x.png"}


def test_build_app_wires_queue_and_endpoints(tmp_path):
    settings = AppSettings(model=str(tmp_path / "m"), output_dir=str(tmp_path / "out"), queue_size=5,
                           auth=("ann", "pw"))
    demo = webapp.build_app(settings)
    assert demo._queue.max_size == 5
    named = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert set(named) == {"edit_first_frame", "edit_video"}
    for fn in named.values():
        assert fn.concurrency_limit == 1 and fn.concurrency_id == webapp.GPU_CONCURRENCY_ID
    kwargs = webapp.launch_kwargs(settings)
    assert kwargs["max_file_size"] == settings.max_upload_mb * 1024 * 1024
    assert str(Path(settings.output_dir).resolve() / "anyv2v-app") in kwargs["allowed_paths"]  # not the CLI's
    assert kwargs["auth"] == ("ann", "pw") and kwargs["show_error"] is False
    assert "m does not exist" in str(demo.config)  # the model-source problem is on the page
    # Every event that shows a prepared clip goes through the latest-wins wrapper (issue 14 item 9).
    shows_clip = [fn for fn in demo.fns.values() if any(getattr(o, "elem_id", None) == "prepared-video" for o in fn.outputs)]
    shown_by = {fn.fn.__name__ for fn in shows_clip if fn.fn is not None}
    assert "on_prepare_latest" in shown_by and shown_by <= {"on_prepare_latest", "on_new_video", "on_example"}, shown_by
    assert "on_prepare" not in shown_by
    # A visitor who leaves frees the GPU: the page cancels the session's jobs on unload (item 10).
    assert any(fn.fn is not None and fn.fn.__name__ == "on_unload" for fn in demo.fns.values())


# ---------------------------------------------------------------------------------------------------------
# The real server through gradio_client
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_backbone_env):
    root = tmp_path_factory.mktemp("app_api")
    env = {**make_models(root / "models", ip2p=True), **tiny_backbone_env}  # all three video models
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
                 "negative_prompt", "seed", "frames", "fps", "width", "height", "keep_audio", "end_time"):
        assert name in video_params
    optional = {p["parameter_name"] for p in endpoints["/edit_video"]["parameters"] if p["parameter_has_default"]}
    assert {"tau_conv", "inversion_steps", "keep_audio", "end_time"} <= optional and "video" not in optional
    assert len(endpoints["/edit_video"]["returns"]) == 2  # the video and its settings JSON
    frame_params = [p["parameter_name"] for p in endpoints["/edit_first_frame"]["parameters"]]
    assert frame_params[:2] == ["video", "editor"] and "image" in frame_params and "instruction" in frame_params


def test_view_api_is_unchanged(client):
    """The public API (names, parameters, defaults, docs) is exactly what tests/fixtures/view_api.json recorded."""
    info = client.view_api(print_info=False, return_format="dict")
    expected = json.loads((Path(__file__).parent / "fixtures" / "view_api.json").read_text())
    assert json.loads(json.dumps(info)) == expected


def test_edit_first_frame_manual(client):
    from gradio_client import handle_file

    paths = client.predict(
        video=handle_file(str(CLIP)), editor="manual", image=handle_file(str(EDITED)), width=64, height=64,
        api_name="/edit_first_frame",
    )
    assert len(paths) == 1
    with Image.open(paths[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_api_image_keeps_transparency(client, tmp_path):
    """An RGBA edited frame: its transparent half shows the source's first frame, its opaque half the paint."""
    from gradio_client import handle_file

    from anyv2v.config import EditConfig
    from anyv2v.pipeline import prepare_clip

    painted = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    painted.paste((255, 0, 0, 255), (0, 0, 32, 64))
    path = tmp_path / "half.png"
    painted.save(path)
    (result,) = client.predict(video=handle_file(str(CLIP)), editor="manual", image=handle_file(str(path)),
                               width=64, height=64, api_name="/edit_first_frame")
    source = np.asarray(prepare_clip(CLIP, EditConfig(frames=2, width=64, height=64)).first_frame, dtype=int)
    edited = np.asarray(Image.open(result).convert("RGB"), dtype=int)
    assert (edited[:, :32] == [255, 0, 0]).all()
    assert np.abs(edited[:, 32:] - source[:, 32:]).max() <= 1  # the source, not black


def test_jpeg_uploads_work_in_every_image_input_of_the_api(client, server, tmp_path):
    """Phone and camera JPEGs (RGB, grey, CMYK, progressive, EXIF-rotated) in every image input of the API: the
    manual editor uses them upright; the other editors' inputs get past the upload (their own message if the
    editor cannot run on this server, never Gradio's generic error)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    jpegs = jpeg_variants(tmp_path)
    for name, path in jpegs.items():
        (result,) = client.predict(video=handle_file(str(CLIP)), editor="manual", image=handle_file(str(path)),
                                   width=64, height=64, api_name="/edit_first_frame")
        pixels = np.asarray(Image.open(result).convert("RGB"), dtype=int)
        left, right = pixels[:, :24].mean(axis=(0, 1)), pixels[:, 40:].mean(axis=(0, 1))
        if name == "exif":  # upright: the stored picture turned 180 degrees
            left, right = right, left
        if name == "grey":
            assert left.mean() > right.mean() + 20, (name, left, right)  # red is the lighter grey
        else:
            assert left[0] > 150 > left[2] and right[2] > 150 > right[0], (name, left, right)
    import editors

    params = {p.name: p for p in api_editor_params(editors.available_editors())}
    for param in params.values():
        if param.spec.kind not in ("image", "mask") or param.name == "image":
            continue
        (editor,) = param.targets
        try:
            client.predict(video=handle_file(str(CLIP)), editor=editor, width=64, height=64, steps=1,
                           api_name="/edit_first_frame", **{param.name: handle_file(str(jpegs["exif"]))})
        except AppError as exc:
            assert "upstream Gradio app" not in str(exc) and "Something went wrong" not in str(exc), (param.name, exc)
    assert "cannot write mode" not in server.log() and "unexpected error" not in server.log()


def test_edit_video_with_a_jpeg_edited_frame(client, tmp_path):
    from gradio_client import handle_file

    jpegs = jpeg_variants(tmp_path, (80, 60))
    video, _ = client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(str(jpegs["cmyk"])),
                              prompt=PROMPT, api_name="/edit_video", **{**TINY_EDIT, "seed": 31337})
    assert read_mp4(video) == (8, (64, 64), 8.0)  # (its own seed: other tests count on a fresh inversion)


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
        video, settings_json = client.predict(
            video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
            api_name="/edit_video", **{**TINY_EDIT, **extra},
        )
        assert video.endswith(".mp4") and settings_json.endswith(".json")
        assert read_mp4(video) == (8, (64, 64), 8.0)
        record = json.loads(Path(settings_json).read_text())
        assert record["output"] == Path(video).name and (server.output_dir / record["output"]).is_file()
        return record

    first = edit()
    assert first["inversion_from_cache"] is False and first["unet_calls"]["inversion"] == 10
    assert first["settings"]["tau_conv"] == 0.2 and first["prompt"] == PROMPT
    # end_time instead of a frame count (1 s at 8 fps = the same 8 frames), and keep_audio (the clip has audio).
    second = edit(tau_conv=1.0, tau_sa=1.0, tau_ta=1.0, frames=None, end_time=1.0, keep_audio=True)
    assert second["inversion_from_cache"] is True and second["unet_calls"]["inversion"] == 0
    assert second["output"] != first["output"]  # unique names, nothing overwritten
    assert second["settings"]["tau_conv"] == 1.0 and second["settings"]["keep_audio"] is True
    # No preview files for API calls: only the results (and their candidates) are written.
    assert not list((server.output_dir / "clips").glob("*"))


def test_cancel_stops_the_engine_between_steps(client, server):
    from gradio_client import handle_file

    before = set(server.output_dir.glob("*-edit-*.mp4"))
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
    assert set(server.output_dir.glob("*-edit-*.mp4")) == before  # nothing written


def test_a_client_that_goes_away_frees_the_gpu_within_a_few_steps(client, server, tmp_path):
    """A gradio_client killed mid-edit: its session ends, its job stops at the next step (no file written) and
    the next caller's job runs at once, instead of waiting for an edit nobody will collect."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "leaver.py"
    script.write_text(
        "import time\n"
        "from gradio_client import Client, handle_file\n"
        f"client = Client({server.url!r}, verbose=False)\n"
        f"client.submit(video=handle_file({str(CLIP)!r}), edited_frame=handle_file({str(EDITED)!r}), prompt='x',\n"
        "              api_name='/edit_video', frames=8, fps=8, width=64, height=64, steps=10,\n"
        "              inversion_steps=999, seed=777)\n"  # minutes of inversion steps on this machine
        "time.sleep(600)\n"
    )
    before = set(server.output_dir.glob("*-edit-*.mp4"))
    started, stopped = server.log().count("video edit started"), server.log().count("stopped after a cancel")
    leaver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while server.log().count("video edit started") == started:
            assert time.monotonic() < deadline and leaver.poll() is None, server.log()[-2000:]
            time.sleep(0.2)
        time.sleep(2.0)  # a few inversion steps in
    finally:
        leaver.send_signal(signal.SIGKILL)
        leaver.wait(timeout=30)
    killed = time.monotonic()
    while server.log().count("stopped after a cancel") == stopped:
        assert time.monotonic() - killed < 30, "the job of a client that went away kept running:\n" + server.log()[-2000:]
        time.sleep(0.2)
    assert "a visitor left" in server.log()
    from gradio_client import handle_file

    paths = client.predict(video=handle_file(str(CLIP)), editor="manual", image=handle_file(str(EDITED)),
                           width=64, height=64, api_name="/edit_first_frame")  # the GPU slot is free again
    assert len(paths) == 1 and time.monotonic() - killed < 60
    assert set(server.output_dir.glob("*-edit-*.mp4")) == before


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
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    for frame in (noise, CLIP):
        with pytest.raises(AppError, match=rf"{frame.name} is not a readable image") as info:
            client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(str(frame)), prompt=PROMPT,
                           api_name="/edit_video", **TINY_EDIT)
        assert "show_error" not in str(info.value)
    assert "unexpected error" not in server.log()
    logged = len(server.log())
    with pytest.raises(AppError, match="edited_frame is required"):
        client.predict(video=handle_file(str(CLIP)), edited_frame=None, prompt=PROMPT, api_name="/edit_video", **TINY_EDIT)
    assert "Traceback" not in server.log()[logged:]  # a user's mistake is not a server error


# ---------------------------------------------------------------------------------------------------------
# The video model as a choice (issues 16 and 17): /edit_video's `backbone`, on tiny SEINE and ConsistI2V
# ---------------------------------------------------------------------------------------------------------


def _edit_with(client, **settings):
    from gradio_client import handle_file

    video, settings_json = client.predict(
        video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT, api_name="/edit_video",
        **settings,
    )
    assert read_mp4(video)[:2] == (settings["frames"], (settings["width"], settings["height"]))
    return json.loads(Path(settings_json).read_text())


def test_edit_video_on_seine_and_its_own_inversion(client, server):
    """backbone="seine": the settings JSON names it, 20 inversion steps serve its 10 DDPM steps (they read t+1
    from a kept grid of half the inversion steps; 10 is refused below), its defaults stand for the I2VGen-XL ones
    left out, and the inversion is SEINE's own (never I2VGen-XL's of the same clip), reused by the next SEINE edit."""
    tiny = {**TINY_EDIT, "inversion_steps": 20}
    plain = _edit_with(client, **tiny)  # I2VGen-XL first, on the same clip, seed and inversion steps
    assert plain["settings"]["backbone"] == "i2vgen-xl" and plain["settings"]["guidance"] == 9.0
    first = _edit_with(client, **tiny, backbone="seine")
    settings = first["settings"]
    assert settings["backbone"] == "seine" and settings["inversion_steps"] == 20
    assert settings["guidance"] == 4.0 and settings["negative_prompt"] == ""  # SEINE's, not I2VGen-XL's 9
    assert first["inversion_from_cache"] is False and first["unet_calls"]["inversion"] == 20
    assert first["model"] == "tiny-seine"
    second = _edit_with(client, **tiny, backbone="seine", tau_conv=1.0)
    assert second["inversion_from_cache"] is True and second["settings"]["tau_conv"] == 1.0


def test_edit_video_on_consisti2v(client, server):
    record = _edit_with(client, **TINY_EDIT, backbone="consisti2v")
    settings = record["settings"]
    assert settings["backbone"] == "consisti2v" and record["model"] == "tiny-consisti2v"
    # ConsistI2V's own defaults for what the call left at I2VGen-XL's: guidance 35, start index 4, its negative
    # prompt, the source branch on the edited frame.
    assert settings["guidance"] == 35.0 and settings["start_index"] == 4
    from anyv2v.backbones.consisti2v import NEGATIVE_PROMPT

    assert settings["source_branch_frame"] == "edited" and settings["negative_prompt"] == NEGATIVE_PROMPT
    assert sum(record["unet_calls"]["sampling"].values()) == 10 - 4
    # A setting given other than at I2VGen-XL's default is kept.
    again = _edit_with(client, **TINY_EDIT, backbone="consisti2v", guidance=12.0, start_index=2)
    assert again["settings"]["guidance"] == 12.0 and again["settings"]["start_index"] == 2


def test_edit_video_backbone_errors_are_one_line(client, server):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
                       api_name="/edit_video", **TINY_EDIT, backbone="sora")
    message = str(info.value)
    assert "Backbone 'sora' is not a video model of this app; use one of i2vgen-xl, seine, consisti2v" in message
    assert "\n" not in message.strip() and "Traceback" not in message
    seine_grid = r"Inversion_steps=10 .* does not keep latents.*use inversion_steps in: 20, 40"  # one line
    with pytest.raises(AppError, match=seine_grid):
        client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(str(EDITED)), prompt=PROMPT,
                       api_name="/edit_video", **TINY_EDIT, backbone="seine")
