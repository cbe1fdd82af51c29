"""The identity editor through the app's public API (`python app.py` on localhost, tiny models, the tests' face
analyzer plugged in by ANYV2V_FACE_ANALYZER)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.app_helpers import make_models, run_app
from tests.test_instantid import face_photo, scene


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    root = tmp_path_factory.mktemp("instantid_app")
    env = make_models(root / "models", instantid=True)
    with run_app(root, env) as server:
        yield Client(server.url, verbose=False, download_files=str(root / "downloads")), root


def test_edit_first_frame_with_instantid(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from anyv2v.video import write_video

    api, root = client
    frames = [scene((64, 64), boxes=((18, 10, 46, 46),)) for _ in range(8)]
    video = write_video(frames, root / "person.mp4", fps=8)
    face_photo().save(root / "face.png")
    Image.new("RGB", (64, 64)).save(root / "noface.png")
    info = api.view_api(print_info=False, return_format="dict")
    names = [p["parameter_name"] for p in info["named_endpoints"]["/edit_first_frame"]["parameters"]]
    for name in ("face_image", "face", "strength", "identitynet_strength", "ip_scale", "guidance", "prompt"):
        assert name in names

    request = dict(video=handle_file(str(video)), editor="instantid", face_image=handle_file(str(root / "face.png")),
                   candidates=2, width=64, height=64, resolution=64, steps=2, seed=7, api_name="/edit_first_frame")
    first = api.predict(**request)
    assert len(first) == 2
    for path in first:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
    again = api.predict(**request)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))  # same seed, same candidates

    with pytest.raises(AppError, match="(?i)no face found in the face photo"):  # the app capitalises messages
        api.predict(**{**request, "face_image": handle_file(str(root / "noface.png"))})


def test_page_shows_the_users_sentence_and_logs_the_operators_details(tmp_path, monkeypatch, caplog):
    """Unavailable editors on the page: one sentence saying what is missing and that the operator can enable it,
    never a server path, a pip command or twice-escaped markup; the details go to the server log. AnyDoor's region
    mode is a choice on the page."""
    import logging

    import app as webapp
    from server.settings import AppSettings

    monkeypatch.delenv("ANYV2V_FACE_ANALYZER", raising=False)
    monkeypatch.setenv("ANYV2V_FACE_MODELS", str(tmp_path / "antelopev2"))
    monkeypatch.setenv("ANYV2V_INSTANTID_MODEL", str(tmp_path / "instantid"))
    monkeypatch.setenv("ANYV2V_ANYDOOR_MODEL", str(tmp_path / "anydoor"))
    settings = AppSettings(model=str(tmp_path / "m"), output_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING):
        demo = webapp.build_app(settings)
    page = str(demo.config)
    assert "the identity editor (InstantID) is not set up on this server" in page
    assert "the subject editor (AnyDoor) is not set up on this server" in page
    for leak in (str(tmp_path / "antelopev2"), str(tmp_path / "instantid"), str(tmp_path / "anydoor"), "pip install",
                 "&amp;", "convert-instantid", "convert-anydoor"):
        assert leak not in page, leak
    logged = caplog.text
    assert "editor instantid unavailable" in logged and str(tmp_path / "antelopev2") in logged
    assert "pip install insightface" in logged and "convert-anydoor" in logged
    radios = [c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "anydoor-region_mode"]
    assert radios and radios[0]["type"] == "radio" and radios[0]["props"]["value"] == "box"


def test_edit_errors_show_the_users_sentence_and_log_the_operators_details(caplog):
    """The app's error text for an editor error is the user's sentence; the operator's part is only logged."""
    import logging

    from server.messages import user_message
    from editors.base import EditorError

    exc = EditorError("automatic subject masks are not set up on this server; upload a subject mask instead.",
                      operator="the rembg model file /srv/home/.u2net/u2net.onnx is missing: download it")
    with caplog.at_level(logging.WARNING):
        message, expected = user_message(exc, "editing the first frame")
    assert expected and message.startswith("Automatic subject masks are not set up") and "/srv" not in message
    assert "/srv/home/.u2net/u2net.onnx is missing" in caplog.text
