"""The InstantID identity editor: keypoint drawing, face choice, the converter, IdentityNet's face tokens, and the
editor end to end (library, CLI) on a tiny random InstantID with the deterministic test face analyzer."""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from editors import get_editor
from editors.base import EditorError
from editors.instantid.faces import Face, as_rgb_photo, choose_face, draw_keypoints
from editors.instantid.convert import (
    IDENTITYNET_DIR,
    IP_ADAPTER_FILE,
    convert_instantid,
    cross_attention_hidden_sizes,
    random_instantid_ip_adapter,
    read_ip_adapter_pickle,
)

FAKE_ANALYZER = "tests.fake_faces:make_analyzer"
FAST = {"resolution": 64, "steps": 2}  # one denoising step at strength 0.85


@pytest.fixture(scope="module")
def tiny_instantid(tmp_path_factory) -> Path:
    return get_editor("instantid").make_tiny_model(tmp_path_factory.mktemp("models") / "instantid-tiny")


@pytest.fixture
def use_tiny(tiny_instantid, monkeypatch) -> Path:
    monkeypatch.setenv("ANYV2V_FACE_ANALYZER", FAKE_ANALYZER)
    monkeypatch.setenv("ANYV2V_INSTANTID_MODEL", str(tiny_instantid))
    monkeypatch.delenv("ANYV2V_SDXL_MODEL", raising=False)
    return tiny_instantid


def scene(size=(64, 64), boxes=((20, 12, 44, 44),), background=(40, 60, 80)) -> Image.Image:
    """A frame whose "faces" (for the test analyzer) are the bright boxes."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.rectangle(box, fill=(235, 225, 215))
    return image


def face_photo(pattern: int = 0) -> Image.Image:
    photo = Image.new("RGB", (80, 80), (10, 10, 10))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((16, 10, 64, 70), fill=(250, 240, 230))
    draw.rectangle((28 + 4 * pattern, 30, 34 + 4 * pattern, 36), fill=(205, 205, 205))
    return photo


def fake_face(x1, y1, x2, y2) -> Face:
    return Face((x1, y1, x2, y2), np.zeros((5, 2), np.float32), np.zeros(512, np.float32))


# ---- keypoints, faces, photos -----------------------------------------------------------------------------


def test_keypoint_image_marks_each_keypoint_with_its_colour():
    keypoints = np.array([[40, 40], [160, 40], [100, 100], [50, 170], [150, 170]], dtype=np.float32)
    image = np.asarray(draw_keypoints((200, 220), keypoints))
    assert image.shape == (220, 200, 3)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    for (x, y), colour in zip(keypoints.astype(int), colours, strict=True):
        assert tuple(image[y, x]) == colour
        assert tuple(image[y, x + 9]) == colour and tuple(image[y + 9, x]) == colour  # radius-10 disc
        assert tuple(image[y, x + 13]) != colour or (x, y) == (100, 100)
    # Limbs to the nose at 60 % of the outer keypoint's colour, e.g. halfway from the left eye to the nose.
    assert tuple(image[70, 70]) == (153, 0, 0)
    assert tuple(image[130, 75]) == (153, 153, 0)
    assert tuple(image[5, 5]) == (0, 0, 0) and tuple(image[215, 100]) == (0, 0, 0)


def test_choose_face_largest_by_default_or_nth_from_the_left():
    small_left, big_right = fake_face(0, 0, 30, 30), fake_face(100, 0, 180, 80)
    face, note = choose_face([big_right, small_left], 0, "the first frame")
    assert face is big_right and "using the largest (face 2 from the left)" in note
    assert choose_face([big_right, small_left], 1, "the first frame")[0] is small_left
    assert choose_face([big_right, small_left], 2, "the first frame")[0] is big_right
    with pytest.raises(EditorError, match=r"Face = 3, but the first frame has 2 faces; pick 0 \(largest\) to 2"):
        choose_face([big_right, small_left], 3, "the first frame")
    twins = [fake_face(0, 0, 50, 50), fake_face(60, 0, 108, 48)]
    with pytest.raises(EditorError, match=r"the first frame has 2 faces of similar size; set Face to 1\.\.2"):
        choose_face(twins, 0, "the first frame")
    with pytest.raises(EditorError, match="no face found in the face photo"):
        choose_face([], 0, "the face photo")
    with pytest.raises(EditorError, match=r"too small \(10x10 px at \(5, 5\); at least 24 px"):
        choose_face([fake_face(5, 5, 15, 15)], 0, "the first frame")


def test_a_click_picks_the_face_under_it(use_tiny):
    frame = scene((96, 64), boxes=((4, 10, 34, 40), (50, 12, 80, 42)))
    editor = get_editor("instantid")
    assert editor.face_at(frame, 60, 20) == 2 and editor.face_at(frame, 10, 30) == 1
    assert editor.face_at(frame, 40, 5) == 1  # outside both boxes: the nearest centre
    assert editor.face_at(scene(boxes=()), 10, 10) == 0
    # The app's click on the first frame goes through the editor interface and the service layer.
    assert editor.click_inputs == ("face",) and editor.values_at(frame, 60, 20) == {"face": 2}
    from server.service import EditService
    from server.settings import AppSettings

    service = EditService(AppSettings(output_dir=str(use_tiny.parent / "outputs")))
    assert service.frame_click_values("instantid", frame, 10, 30) == {"face": 1}


def test_grey_and_transparent_photos_become_rgb():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgb, note = as_rgb_photo(rgba)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255) and "transparent" in note
    grey, note = as_rgb_photo(Image.new("L", (8, 8), 77))
    assert grey.mode == "RGB" and grey.getpixel((3, 3)) == (77, 77, 77) and "greyscale" in note
    deep = Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).convert("I;16")
    rgb16, _ = as_rgb_photo(deep)
    assert rgb16.mode == "RGB" and rgb16.getpixel((7, 7)) == (255, 255, 255)
    same, note = as_rgb_photo(Image.new("RGB", (8, 8)))
    assert note is None


# ---- converter --------------------------------------------------------------------------------------------


def instantid_resampler(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, dim_head: int = 64) -> torch.Tensor:
    """InstantID's Resampler (ip_adapter/resampler.py) written out on its raw `ip-adapter.bin` weights."""

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])

    def split(t):
        b, n, _ = t.shape
        return t.view(b, n, heads, -1).transpose(1, 2)

    latents = state["latents"].repeat(x.shape[0], 1, 1)
    x = F.linear(x, state["proj_in.weight"], state["proj_in.bias"])
    for i in range(4):
        p = f"layers.{i}"
        xs, lat = ln(x, f"{p}.0.norm1"), ln(latents, f"{p}.0.norm2")
        q = F.linear(lat, state[f"{p}.0.to_q.weight"])
        k, v = F.linear(torch.cat([xs, lat], dim=-2), state[f"{p}.0.to_kv.weight"]).chunk(2, dim=-1)
        scale = 1 / math.sqrt(math.sqrt(dim_head))
        weight = torch.softmax((split(q) * scale) @ (split(k) * scale).transpose(-2, -1), dim=-1)
        out = (weight @ split(v)).permute(0, 2, 1, 3).reshape(lat.shape[0], lat.shape[1], -1)
        latents = F.linear(out, state[f"{p}.0.to_out.weight"]) + latents
        hidden = F.gelu(F.linear(ln(latents, f"{p}.1.0"), state[f"{p}.1.1.weight"]))
        latents = F.linear(hidden, state[f"{p}.1.3.weight"]) + latents
    return ln(F.linear(latents, state["proj_out.weight"], state["proj_out.bias"]), "norm_out")


def instantid_download(root: Path, tiny: Path, state: object) -> Path:
    """A folder laid out like InstantX/InstantID: ControlNetModel/ + ip-adapter.bin (a torch pickle)."""
    root.mkdir(parents=True)
    shutil.copytree(tiny / IDENTITYNET_DIR, root / IDENTITYNET_DIR)
    torch.save(state, root / "ip-adapter.bin")
    return root


def test_converter_output_loads_through_diffusers_as_instantids_resampler(tiny_instantid, tmp_path):
    from diffusers import UNet2DConditionModel

    from editors.instantid.pipeline import load_instantid_pipeline

    unet = UNet2DConditionModel.from_pretrained(tiny_instantid / "sdxl" / "unet")
    state = random_instantid_ip_adapter(
        cross_attention_hidden_sizes(unet), output_dims=64, hidden_dims=128, heads=2, generator=torch.Generator().manual_seed(3)
    )
    src = instantid_download(tmp_path / "InstantID", tiny_instantid, state)
    out = convert_instantid(src, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == [IDENTITYNET_DIR, IP_ADAPTER_FILE]
    from safetensors.torch import load_file

    flat = load_file(out / IP_ADAPTER_FILE)
    assert set(flat) == {f"image_proj.{k}" for k in state["image_proj"]} | {f"ip_adapter.{k}" for k in state["ip_adapter"]}

    pipe = load_instantid_pipeline(out, str(tiny_instantid / "sdxl"), device="cpu", dtype="float32")
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(projection).__name__ == "IPAdapterPlusImageProjection"
    embedding = torch.randn(2, 1, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = instantid_resampler(state["image_proj"], embedding, heads=2)
        got = projection(embedding)
    assert got.shape == (2, 16, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Every cross-attention layer got its to_k_ip / to_v_ip in InstantID's processor order (ids 1, 3, 5, ...).
    processors = [p for name, p in pipe.unet.attn_processors.items() if name.endswith("attn2.processor")]
    assert len(processors) == len(state["ip_adapter"]) // 2
    for n, processor in enumerate(processors):
        assert torch.equal(processor.to_k_ip[0].weight, state["ip_adapter"][f"{2 * n + 1}.to_k_ip.weight"])
        assert torch.equal(processor.to_v_ip[0].weight, state["ip_adapter"][f"{2 * n + 1}.to_v_ip.weight"])


class NotATensor:
    pass


@pytest.mark.parametrize(
    "payload, message",
    [
        (lambda s: {**s, "extra": NotATensor()}, r"holds a pickled \S*NotATensor object, not only tensors.*nothing in it ran"),
        (lambda s: {"image_proj": {**s["image_proj"], "latents": [1.0, 2.0]}, "ip_adapter": s["ip_adapter"]},
         r"image_proj\['latents'\] is a list, not a tensor"),
        (lambda s: {"image_proj": s["image_proj"], "ip_adapter": {"1.to_k_ip.weight": 3}}, "is a int, not a tensor"),
        (lambda s: {"state_dict": s["image_proj"]}, "expected the sections image_proj and ip_adapter"),
    ],
)
def test_converter_refuses_a_pickle_with_anything_but_tensors(tiny_instantid, tmp_path, payload, message):
    state = random_instantid_ip_adapter([8], output_dims=8, hidden_dims=64, heads=1)
    src = instantid_download(tmp_path / "InstantID", tiny_instantid, payload(state))
    with pytest.raises(EditorError, match=message):
        convert_instantid(src, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["InstantID"]  # no temp folder left behind


def test_converter_cli_and_its_errors(tiny_instantid, tmp_path, capsys):
    from editors.__main__ import main

    state = random_instantid_ip_adapter([8], output_dims=8, hidden_dims=64, heads=1)
    src = instantid_download(tmp_path / "InstantID", tiny_instantid, state)
    assert main(["convert-instantid", str(src / "ip-adapter.bin"), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert read_ip_adapter_pickle(src / "ip-adapter.bin")["ip_adapter"].keys() == {"1.to_k_ip.weight", "1.to_v_ip.weight"}
    assert main(["convert-instantid", str(src), str(tmp_path / "out")]) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    shutil.rmtree(src / IDENTITYNET_DIR)
    assert main(["convert-instantid", str(src), str(tmp_path / "out2")]) == 1
    assert "IdentityNet not found" in capsys.readouterr().err and not (tmp_path / "out2").exists()


class RunsCode:
    """A pickle payload that would run a shell command when unpickled (it must never be)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_converter_messages_are_one_clear_line(tiny_instantid, tmp_path):
    """A plain pickle carrying code, a folder where the file should be, a non-empty OUT: one line each from the CLI,
    no torch warning, the whole sentence."""
    import pickle
    import subprocess

    repo = Path(__file__).resolve().parents[1]

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "editors", "convert-instantid", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=240)

    state = random_instantid_ip_adapter([8], output_dims=8, hidden_dims=64, heads=1)
    src = instantid_download(tmp_path / "InstantID", tiny_instantid, state)
    marker = tmp_path / "ran"
    with open(src / "ip-adapter.bin", "wb") as handle:
        pickle.dump({"image_proj": RunsCode(marker)}, handle, protocol=4)
    result = run(str(src), str(tmp_path / "out"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {src / 'ip-adapter.bin'} is a plain pickle, not InstantID's IP-Adapter of tensors; safe loading "
        "(torch.load with weights_only=True) refused it and nothing in it ran. Use the ip-adapter.bin from "
        "InstantX/InstantID."
    )
    assert not marker.exists() and not (tmp_path / "out").exists()

    (src / "ip-adapter.bin").unlink()
    (src / "ip-adapter.bin").mkdir()
    result = run(str(src), str(tmp_path / "out"))
    assert result.stderr.strip() == f"error: {src / 'ip-adapter.bin'} is a folder; it must be the ip-adapter.bin file from InstantX/InstantID."

    (src / "ip-adapter.bin").rmdir()
    torch.save(state, src / "ip-adapter.bin")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    result = run(str(src), str(full))
    assert result.stderr.strip() == (
        f"error: {full} already exists and is not an empty folder; give a new folder for the converted InstantID model."
    )


# ---- the pipeline: IdentityNet sees the face tokens -------------------------------------------------------


def test_identitynet_gets_the_face_tokens_not_the_text(use_tiny):
    pipe = get_editor("instantid").pipeline()  # the editor's own (cached) pipeline
    identitynet_states, unet_states = [], []
    hooks = [
        pipe.controlnet.register_forward_hook(
            lambda m, args, kwargs, out: identitynet_states.append(kwargs["encoder_hidden_states"].clone()),
            with_kwargs=True,
        ),
        pipe.unet.register_forward_hook(
            lambda m, args, kwargs, out: unet_states.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
        ),
    ]
    try:
        check_identitynet_inputs(pipe, identitynet_states, unet_states)
    finally:
        for hook in hooks:
            hook.remove()


def check_identitynet_inputs(pipe, identitynet_states, unet_states):
    embedding = torch.randn(512, generator=torch.Generator().manual_seed(1))
    frame = scene()
    pipe(
        face_embedding=embedding,
        prompt="a person",
        image=frame,
        control_image=draw_keypoints(frame.size, np.array([[25, 25], [40, 25], [32, 32], [26, 40], [38, 40]])),
        strength=0.85,
        num_inference_steps=4,
        guidance_scale=5.0,
        output_type="latent",
    )
    with torch.no_grad():
        face_tokens = pipe.face_tokens(pipe.face_image_embeds(embedding, 1, guidance=True))
        zero_tokens = pipe.face_tokens(torch.zeros(1, 1, 1, 512))
    assert face_tokens.shape == (2, 16, 64)
    torch.testing.assert_close(face_tokens[0], zero_tokens[0])  # negative branch: a zero embedding, projected
    assert len(identitynet_states) == 3 == len(unet_states)  # int(4 * 0.85) steps
    for seen, text in zip(identitynet_states, unet_states, strict=True):
        torch.testing.assert_close(seen, face_tokens)
        assert text.shape == (2, 77, 64)  # the UNet's cross-attention gets the text
    assert not pipe.controlnet._forward_pre_hooks  # the swap is removed after the call

    # Without guidance (guidance 1) the IdentityNet gets the positive tokens only.
    identitynet_states.clear()
    pipe(face_embedding=embedding, prompt="a person", image=frame, control_image=frame, strength=0.5,
         num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    torch.testing.assert_close(identitynet_states[0], face_tokens[1:])


# ---- the editor end to end ----------------------------------------------------------------------------------


def test_editor_declares_inputs_defaults_and_video_settings():
    editor = get_editor("instantid")
    assert editor.title == "Identity (InstantID)"
    defaults = {spec.name: spec.default for spec in editor.inputs}
    assert defaults["strength"] == 0.85 and defaults["identitynet_strength"] == 0.8 and defaults["ip_scale"] == 0.8
    assert defaults["steps"] == 30 and defaults["guidance"] == 5.0 and defaults["face"] == 0
    assert editor.input("face_image").required and editor.input("face_image").kind == "image"
    assert editor.video_settings == {"tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 1.0, "start_index": 0}


def test_unavailable_reason_says_what_to_install(tmp_path, monkeypatch, use_tiny):
    editor = get_editor("instantid")
    assert editor.unavailable_reason() is None
    monkeypatch.delenv("ANYV2V_FACE_ANALYZER")
    monkeypatch.setenv("ANYV2V_FACE_MODELS", str(tmp_path / "antelopev2"))
    # The page's sentence: what is missing and that the operator can enable it; no paths, commands or markup
    # (a `&&` inside a code span came out as a literal `&amp;&amp;` on the page).
    reason = editor.unavailable_reason()
    assert reason == (
        "the identity editor (InstantID) is not set up on this server (it lacks the face analysis models, "
        "InsightFace antelopev2); the server's operator can enable it."
    )
    # The operator's details (server log, CLI, docs/editors.md): which files where, what to install.
    details = editor.unavailable().operator
    assert "scrfd_10g_bnkps.onnx and glintr100.onnx not found in" in details and str(tmp_path / "antelopev2") in details
    assert "pip install insightface" in details and "non-commercial" in details and "opencv-python-headless" in details
    monkeypatch.setenv("ANYV2V_FACE_ANALYZER", FAKE_ANALYZER)
    empty = tmp_path / "instantid"
    empty.mkdir()
    (empty / "ip-adapter.bin").write_bytes(b"")
    assert "convert-instantid" in editor.unavailable(str(empty)).operator
    assert "InstantX/InstantID" in editor.unavailable(str(tmp_path / "missing")).operator
    monkeypatch.setenv("ANYV2V_SDXL_MODEL", str(tmp_path / "no-sdxl"))
    assert editor.unavailable_reason(str(tmp_path / "missing")) == (
        "the identity editor (InstantID) is not set up on this server (it lacks the InstantID model and the SDXL "
        "base model); the server's operator can enable it."
    )
    for text in (editor.unavailable_reason(str(tmp_path / "missing")), reason):
        assert not any(mark in text for mark in ("/", "`", "&", "<", "pip ", "--"))


def test_unavailable_editor_is_refused_with_the_users_sentence(tmp_path, monkeypatch, use_tiny):
    editor = get_editor("instantid")
    monkeypatch.setenv("ANYV2V_INSTANTID_MODEL", str(tmp_path / "missing"))
    with pytest.raises(EditorError, match=r"it lacks the InstantID model\); the server's operator can enable it") as caught:
        editor.edit(scene(), {"face_image": face_photo(), **FAST})
    assert str(tmp_path) not in str(caught.value) and str(tmp_path / "missing") in caught.value.operator


@pytest.mark.parametrize(
    "size, resolution, expected",
    [
        ((512, 288), 1280, (1280, 704)),  # 16:9: infer_img2img.py's resize_img gives 1280x704
        ((1920, 1080), 1280, (1280, 704)),
        ((288, 512), 1280, (704, 1280)),
        ((512, 512), 1280, (1280, 1280)),
        ((640, 480), 1280, (1280, 960)),  # 4:3
        ((512, 384), 1024, (1024, 768)),
        ((512, 400), 1280, (1280, 960)),  # 1000 rounds down to 960 (not up to 1024)
        ((2000, 100), 1280, (1280, 64)),  # never below 64
    ],
)
def test_working_size_follows_the_official_img2img_rule(size, resolution, expected):
    from editors.instantid.editor import working_size

    assert working_size(size, resolution) == expected
    assert all(side % 64 == 0 for side in working_size(size, resolution))


def test_working_resolution_defaults_to_the_official_1280():
    assert get_editor("instantid").input("resolution").default == 1280


def test_edit_gives_candidates_at_frame_size_and_follows_the_face_photo(use_tiny):
    editor = get_editor("instantid")
    frame = scene((80, 64), boxes=((24, 10, 52, 46),))
    messages = []
    first = editor.edit(frame, {"face_image": face_photo(0), **FAST}, candidates=2, progress=lambda f, m: messages.append(m))
    assert [image.size for image in first] == [(80, 64)] * 2
    assert any("the first frame: one face" in m for m in messages)
    again = editor.edit(frame, {"face_image": face_photo(0), **FAST}, candidates=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))  # seed + 1
    other = editor.edit(frame, {"face_image": face_photo(3), **FAST}, candidates=1)[0]
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other))  # another identity, another face
    # With IdentityNet and the IP-Adapter both off, the face photo no longer matters: both carry the identity.
    off = {**FAST, "identitynet_strength": 0.0, "ip_scale": 0.0}
    a = editor.edit(frame, {"face_image": face_photo(0), **off})[0]
    b = editor.edit(frame, {"face_image": face_photo(3), **off})[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_inputs_get_one_clear_message(use_tiny, tmp_path, monkeypatch):
    editor = get_editor("instantid")
    frame = scene()
    cases = [
        ({"face_image": Image.new("RGB", (64, 64))}, frame, "no face found in the face photo"),
        ({"face_image": face_photo()}, scene(boxes=()), "no face found in the first frame"),
        ({"face_image": face_photo()}, scene((96, 64), boxes=((4, 10, 34, 40), (50, 12, 80, 42))),
         r"the first frame has 2 faces of similar size; set Face to 1\.\.2"),
        ({"face_image": face_photo()}, scene(boxes=((10, 10, 20, 20),)), "the face in the first frame is too small"),
        ({"face_image": scene((96, 64), boxes=((4, 10, 34, 40), (50, 12, 80, 42)))}, frame,
         "the face photo has 2 faces of similar size; crop the photo"),
        ({"face_image": face_photo(), "face": 2}, frame, "Face = 2, but the first frame has 1 face"),
        ({}, frame, "Face photo is required"),
    ]
    for values, image, message in cases:
        with pytest.raises(EditorError, match=message):
            editor.edit(image, {**values, **FAST})
    # Several faces: picking one by its place from the left works.
    two = scene((96, 64), boxes=((4, 10, 34, 40), (50, 12, 80, 42)))
    assert editor.edit(two, {"face_image": face_photo(), "face": 2, **FAST})[0].size == (96, 64)
    # A greyscale or RGBA photo is used as RGB.
    grey = face_photo().convert("L")
    assert editor.edit(frame, {"face_image": grey, **FAST})[0].size == (64, 64)
    assert editor.edit(frame, {"face_image": face_photo().convert("RGBA"), **FAST})[0].size == (64, 64)
    # Missing converted weights and missing face models.
    with pytest.raises(EditorError, match=r"it lacks the InstantID model\)") as caught:
        (tmp_path / "half").mkdir()
        editor.edit(frame, {"face_image": face_photo(), **FAST}, model=str(tmp_path / "half"))
    assert "lacks ip-adapter.safetensors" in caught.value.operator  # the operator's part: the log and the CLI
    monkeypatch.delenv("ANYV2V_FACE_ANALYZER")
    monkeypatch.setenv("ANYV2V_FACE_MODELS", str(tmp_path / "antelopev2"))
    with pytest.raises(EditorError, match=r"it lacks the face analysis models, InsightFace antelopev2\)") as caught:
        editor.edit(frame, {"face_image": face_photo(), **FAST})
    assert "face analysis needs InsightFace antelopev2" in caught.value.cli_text()


def test_cli_run_writes_candidates_and_nothing_on_error(use_tiny, tmp_path, capsys):
    from editors.__main__ import main

    scene((128, 96), boxes=((40, 16, 88, 80),)).save(tmp_path / "frame.png")
    face_photo().save(tmp_path / "face.png")
    args = ["run", "--editor", "instantid", "--image", str(tmp_path / "frame.png"), "--face-image",
            str(tmp_path / "face.png"), "--width", "64", "--height", "48", "--resolution", "64", "--steps", "4",
            "--candidates", "2"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "a.png"), str(tmp_path / "a-1.png")]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (64, 48) and image.mode == "RGB"

    Image.new("RGB", (64, 64)).save(tmp_path / "noface.png")
    bad = [a if a != str(tmp_path / "face.png") else str(tmp_path / "noface.png") for a in args]
    assert main([*bad, "--out", str(tmp_path / "c.png")]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: no face found in the face photo; use a picture where one face is clearly visible, frontal or "
        "three-quarter, not covered."
    )
    assert not list(tmp_path.glob("c*.png"))


# ---- the InsightFace backend's glue (the insightface package itself is optional and not installed here) -----


STUB_INSIGHTFACE = {
    "insightface/__init__.py": "",
    "insightface/utils/__init__.py": "",
    "insightface/utils/face_align.py": '''
import numpy as np
CALLS = []
def norm_crop(img, landmark, image_size=112):
    CALLS.append((img[0, 0].tolist(), landmark.tolist(), image_size))
    return np.zeros((image_size, image_size, 3), np.uint8)
''',
    "insightface/model_zoo/__init__.py": '''
import numpy as np
LOADED = []
class Detector:
    def prepare(self, ctx_id, **kwargs):
        self.prepared = (ctx_id, kwargs)
    def detect(self, img, max_num=0, metric="default"):
        boxes = np.array([[10, 20, 50, 70, 0.9], [60, 5, 90, 40, 0.8]], np.float32)
        kps = np.array([[[20, 30], [40, 30], [30, 45], [22, 60], [38, 60]]] * 2, np.float32)
        return boxes, kps
class Recognizer:
    input_size = (112, 112)
    def prepare(self, ctx_id, **kwargs):
        self.prepared = ctx_id
    def get_feat(self, img):
        return np.arange(512, dtype=np.float32).reshape(1, 512)
def get_model(name, **kwargs):
    LOADED.append((name, kwargs))
    print("Applied providers:", kwargs.get("providers"))
    return Detector() if "scrfd" in name else Recognizer()
''',
}


@pytest.fixture
def stub_insightface(tmp_path, monkeypatch):
    for name, text in STUB_INSIGHTFACE.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    yield
    for name in [n for n in sys.modules if n == "insightface" or n.startswith("insightface.")]:
        del sys.modules[name]  # later tests see the real environment (no insightface)


def test_insightface_backend_uses_the_local_antelopev2_files(stub_insightface, tmp_path, monkeypatch, capsys):
    """Checks our glue against insightface's model_zoo / face_align API, with the package stubbed."""
    from editors.instantid.faces import InsightFaceAnalyzer, load_face_analyzer

    models = tmp_path / "antelopev2"
    monkeypatch.delenv("ANYV2V_FACE_ANALYZER", raising=False)
    monkeypatch.setenv("ANYV2V_FACE_MODELS", str(models))
    with pytest.raises(EditorError, match="face analysis .* is not set up on this server") as caught:
        load_face_analyzer()
    assert "scrfd_10g_bnkps.onnx and glintr100.onnx not found" in caught.value.operator
    models.mkdir()
    for name in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        (models / name).write_bytes(b"onnx")
    analyzer = load_face_analyzer()
    assert isinstance(analyzer, InsightFaceAnalyzer)
    import insightface.model_zoo as zoo
    from insightface.utils import face_align

    assert [Path(name).name for name, _ in zoo.LOADED] == ["scrfd_10g_bnkps.onnx", "glintr100.onnx"]
    assert zoo.LOADED[0][1]["providers"] == ["CPUExecutionProvider"]
    assert analyzer.detector.prepared == (-1, {"input_size": (640, 640), "det_thresh": 0.5})
    assert capsys.readouterr().out == ""  # its messages go to stderr

    image = Image.new("RGB", (100, 80), (255, 0, 0))
    faces = analyzer.detect(image)
    assert [face.box for face in faces] == [(10.0, 20.0, 50.0, 70.0), (60.0, 5.0, 90.0, 40.0)]
    assert faces[0].keypoints.shape == (5, 2) and faces[0].score == pytest.approx(0.9)
    assert faces[0].embedding.shape == (512,) and faces[0].embedding[511] == 511  # raw, not normalised
    pixel, landmark, size = face_align.CALLS[0]
    assert pixel == [0, 0, 255] and size == 112  # InsightFace works on BGR
    assert landmark == [[20, 30], [40, 30], [30, 45], [22, 60], [38, 60]]
