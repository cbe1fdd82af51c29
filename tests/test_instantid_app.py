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
