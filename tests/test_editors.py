"""First-frame editors end to end: tiny models saved to disk and loaded through the real loaders, run on a real
first frame from the demo data; the manual editor's fitting against the engine's own frame preparation; the CLI
as a user runs it (subprocess)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no hub access in tests: set before any hub library is imported

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import editors
from anyv2v.errors import AnyV2VError, ModelLoadError, OutOfMemoryError
from anyv2v.video import fit_frame, frame_fitter, load_image, prepare_edited_frame, read_video
from editors import available_editors, get_editor
from editors.__main__ import main as cli_main
from editors.base import Editor, EditorError, EditorInput
from editors.frames import candidate_paths, first_frame, save_png
from editors.manual import export_source_frame, fit_uploaded_frame
from editors.nst import CONV_INDEX, VGG19, VGG19_WIDTHS, load_vgg19, stylize, vgg_feature_weights

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "demo"
KITTEN = DEMO / "kitten.mp4"
STYLE = DEMO / "edited" / "ballet__van_gogh.png"
SMALL = 64  # working size for pipeline tests: the real demo frame, fitted down by the engine's code


pytestmark = pytest.mark.usefixtures("single_thread_editor_models")


def arrays_equal(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="session")
def demo() -> Path:
    assert KITTEN.is_file(), f"demo data missing: expected {KITTEN} (shared/ beside the repository)"
    return DEMO


@pytest.fixture(scope="session")
def small_frame(demo: Path) -> Image.Image:
    return first_frame(KITTEN, width=SMALL, height=SMALL)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def ip2p_model(tiny_dir: Path) -> Path:
    return get_editor("instruct_pix2pix").make_tiny_model(tiny_dir / "ip2p")


@pytest.fixture(scope="session")
def vgg_model(tiny_dir: Path) -> Path:
    return get_editor("nst").make_tiny_model(tiny_dir / "vgg19")


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "editors", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


# ---- interface and discovery ------------------------------------------------------------------------------


def test_discovery_finds_every_editor_in_order() -> None:
    found = available_editors()
    assert list(found) == ["instruct_pix2pix", "nst", "anydoor", "instantid", "manual"]
    for name, editor in found.items():
        assert isinstance(editor, Editor) and editor.name == name
        assert editor.title and editor.description and "\n" not in editor.description
        assert all(isinstance(spec, EditorInput) for spec in editor.inputs)
    assert found["instruct_pix2pix"].model_ids == {"pipeline": "timbrooks/instruct-pix2pix"}
    assert found["nst"].model_ids == {"vgg19": "timm/vgg19.tv_in1k"}
    assert get_editor("Instruct-Pix2Pix") is found["instruct_pix2pix"]
    # editors that need several files are packages (found through their __init__), the others modules
    assert type(found["anydoor"]).__module__ == "editors.anydoor.editor"
    assert type(found["instantid"]).__module__ == "editors.instantid.editor"
    assert type(found["nst"]).__module__ == "editors.nst"
    with pytest.raises(EditorError, match="instruct_pix2pix, nst, anydoor, instantid, manual"):
        get_editor("photoshop")


def test_discovery_loads_no_model_library() -> None:
    code = (
        "import sys, editors; editors.available_editors(); "
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validate_inputs_defaults_and_clear_errors() -> None:
    ip2p = get_editor("instruct_pix2pix")
    values = ip2p.validate_inputs({"instruction": " make it snowy ", "steps": 20.0, "unrelated": 1})
    assert values == {
        "instruction": "make it snowy",
        "steps": 20,
        "text_guidance": 7.5,
        "image_guidance": 1.5,
        "seed": 8888,
    }
    assert ip2p.validate_inputs({"instruction": "x"})["steps"] == 100  # reference setting
    with pytest.raises(EditorError, match="Instruction is required"):
        ip2p.validate_inputs({})
    with pytest.raises(EditorError, match="Instruction is empty"):
        ip2p.validate_inputs({"instruction": "   "})
    with pytest.raises(EditorError, match="outside 1..500"):
        ip2p.validate_inputs({"instruction": "x", "steps": 0})
    with pytest.raises(EditorError, match="whole number"):
        ip2p.validate_inputs({"instruction": "x", "steps": 2.5})
    with pytest.raises(EditorError, match="finite"):
        ip2p.validate_inputs({"instruction": "x", "text_guidance": float("nan")})
    nst = get_editor("nst")
    with pytest.raises(AnyV2VError, match="does not exist"):
        nst.validate_inputs({"style_image": "/nonexistent/style.png"})
    with pytest.raises(EditorError, match="outside 32..2048"):
        nst.validate_inputs({"style_image": Image.new("RGB", (8, 8)), "resolution": 100_000})


class _OutOfMemoryEditor(Editor):
    """An editor whose device runs out of memory: the base class must turn that into one clear error."""

    name = "oom"
    title = "OOM"
    description = "runs out of memory"

    def _edit(self, frame, values, candidates, progress, model, device, dtype):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_out_of_memory_becomes_one_clear_error(small_frame: Image.Image) -> None:
    with pytest.raises(OutOfMemoryError, match="lower the resolution or the number of candidates"):
        _OutOfMemoryEditor().edit(small_frame, {})


def test_bad_frame_and_candidates_are_refused(small_frame: Image.Image) -> None:
    manual = get_editor("manual")
    with pytest.raises(EditorError, match="PIL image"):
        manual.edit("frame.png", {"image": small_frame})  # type: ignore[arg-type]
    with pytest.raises(EditorError, match="8x8; editors take frames of 16 to 4096"):
        manual.edit(Image.new("RGB", (8, 8)), {"image": small_frame})
    with pytest.raises(EditorError, match="outside 1..8"):
        get_editor("nst").edit(small_frame, {"style_image": small_frame}, candidates=0)


# ---- InstructPix2Pix ----------------------------------------------------------------------------------------


def test_instruct_pix2pix_end_to_end(ip2p_model: Path, small_frame: Image.Image) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    editor = get_editor("instruct_pix2pix")
    inputs = {"instruction": "turn the kitten into a dog", "steps": 2, "seed": 7}
    events: list[tuple[float, str]] = []
    first = editor.edit(
        small_frame, inputs, candidates=2, progress=lambda f, m: events.append((f, m)), model=str(ip2p_model)
    )
    assert len(first) == 2
    assert all(image.mode == "RGB" and image.size == small_frame.size for image in first)
    assert not arrays_equal(first[0], first[1])  # seeds 7 and 8
    assert events[-1][0] == pytest.approx(1.0) and "step 2/2" in events[-1][1]
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions)

    # Loaded once through the real loader (the tiny folder), cached, with the reference scheduler.
    pipe = editor.load_model(str(ip2p_model), None, None, lambda: pytest.fail("model was loaded twice"))
    assert isinstance(pipe, StableDiffusionInstructPix2PixPipeline)
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)

    again = editor.edit(small_frame, inputs, candidates=2, model=str(ip2p_model))
    assert all(arrays_equal(a, b) for a, b in zip(first, again, strict=True))  # same seed, same candidate


def test_instruct_pix2pix_keeps_odd_frame_sizes(ip2p_model: Path, small_frame: Image.Image, monkeypatch) -> None:
    # The pipeline rounds to multiples of 8; the editor must hand back the frame's exact size.
    monkeypatch.setenv("ANYV2V_IP2P_MODEL", str(ip2p_model))  # the env var picks the model when none is given
    odd = small_frame.resize((60, 44))
    [result] = get_editor("instruct_pix2pix").edit(odd, {"instruction": "make it snowy", "steps": 1})
    assert result.size == (60, 44) and result.mode == "RGB"


def test_instruct_pix2pix_bad_model_is_one_clear_error(small_frame: Image.Image, tmp_path: Path) -> None:
    editor = get_editor("instruct_pix2pix")
    # The user's sentence names no server path; the loader's details are the operator's (log) and the CLI's.
    with pytest.raises(ModelLoadError, match="InstructPix2Pix model cannot be loaded on this server") as caught:
        editor.edit(small_frame, {"instruction": "x", "steps": 1}, model=str(tmp_path / "missing"))
    assert str(tmp_path) not in str(caught.value) and "does not exist" in caught.value.operator
    assert caught.value.cli_text().startswith(f"model folder {tmp_path / 'missing'} does not exist")
    with pytest.raises(ModelLoadError, match="operator can fix it") as caught:
        editor.edit(small_frame, {"instruction": "x", "steps": 1}, model=str(tmp_path))  # empty folder
    assert "cannot load an InstructPix2Pix pipeline" in caught.value.operator
    assert "\n" not in str(caught.value) and "\n" not in caught.value.operator


# ---- neural style transfer -----------------------------------------------------------------------------------


def test_vgg19_uses_torchvision_layer_names() -> None:
    with torch.device("meta"):  # the real-width network, without allocating 80 MB
        vgg = VGG19()
    shapes = {key: tuple(t.shape) for key, t in vgg.state_dict().items()}
    convs = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert set(shapes) == {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    assert shapes["features.0.weight"] == (64, 3, 3, 3) and shapes["features.34.weight"] == (512, 512, 3, 3)
    assert CONV_INDEX["conv4_2"] == 21 and CONV_INDEX["conv5_1"] == 28
    assert len(VGG19_WIDTHS) == 16


def test_vgg19_loader_accepts_timm_and_wrapped_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tiny = VGG19([w // 16 for w in VGG19_WIDTHS])
    # timm's vgg19.tv_in1k layout: features.* plus pre_logits/head (ignored); a wrapper may add a prefix.
    state = {f"model.{k}": v for k, v in tiny.state_dict().items()}
    state["pre_logits.fc1.weight"] = torch.zeros(4, 2, 7, 7)
    state["head.fc.weight"] = torch.zeros(10, 4)
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = load_vgg19(str(tmp_path))  # a folder holding model.safetensors
    assert loaded.widths == tiny.widths
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    batch_norm_like = {
        **tiny.state_dict(),
        "features.1.weight": torch.ones(4),
        "features.1.running_mean": torch.zeros(4),
    }
    with pytest.raises(ModelLoadError, match="not a plain VGG-19"):
        vgg_feature_weights(batch_norm_like)
    with pytest.raises(ModelLoadError, match="cannot load VGG-19 weights"):
        load_vgg19("timm/vgg19.tv_in1k")  # offline and not cached: one clear line, not a hub traceback
    two = tmp_path / "two"
    two.mkdir()
    save_file(tiny.state_dict(), str(two / "a.safetensors"))
    save_file(tiny.state_dict(), str(two / "b.safetensors"))
    with pytest.raises(ModelLoadError, match="several"):
        load_vgg19(str(two))
    (two / "vgg19.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="use a .safetensors file"):
        load_vgg19(str(two))


def test_nst_end_to_end_loss_decreases(vgg_model: Path, small_frame: Image.Image) -> None:
    editor = get_editor("nst")
    style = load_image(STYLE).resize((300, 180))  # a style image of another size and aspect is fine
    inputs = {"style_image": style, "steps": 6, "resolution": SMALL, "seed": 3}
    events: list[tuple[float, str]] = []
    first = editor.edit(
        small_frame, inputs, candidates=2, progress=lambda f, m: events.append((f, m)), model=str(vgg_model)
    )
    assert len(first) == 2 and all(i.mode == "RGB" and i.size == small_frame.size for i in first)
    losses = editor.last_losses
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert sum(1 for _, message in events if message.startswith("style transfer step")) == 6  # per step
    assert not arrays_equal(first[0], first[1])
    again = editor.edit(small_frame, inputs, candidates=2, model=str(vgg_model))
    assert all(arrays_equal(a, b) for a, b in zip(first, again, strict=True))


def test_stylize_returns_the_content_size(vgg_model: Path, small_frame: Image.Image) -> None:
    vgg = load_vgg19(str(vgg_model / "vgg19.safetensors"))  # the file itself also loads
    wide = small_frame.resize((96, 40))
    images, losses = stylize(wide, load_image(STYLE), vgg, seeds=[1], steps=3, resolution=48)
    assert images[0].size == (96, 40) and images[0].mode == "RGB"
    assert losses[-1] < losses[0]


# ---- manual upload -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine_first_frame(demo: Path) -> Image.Image:
    """The first frame exactly as the engine prepares a 16-frame, 512x512 center-crop edit."""
    return read_video(KITTEN, frames=16, fps=8, fit=frame_fitter(512, 512, "crop")).frames[0]


def test_manual_fitting_equals_engine_preparation(engine_first_frame: Image.Image) -> None:
    edited = load_image(DEMO / "edited" / "kitten__dog.png").convert("RGB")
    upload = edited.resize((1024, 768))
    rgba = upload.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # partly transparent
    manual = get_editor("manual")
    for image in (upload, rgba):
        [result] = manual.edit(engine_first_frame, {"image": image}, candidates=3)  # one result regardless
        expected, expected_notes = prepare_edited_frame(image, engine_first_frame, "crop")
        assert arrays_equal(result, expected)
        assert manual.last_notes == expected_notes and "1024x768" in manual.last_notes[0]
    # An RGB upload is fitted exactly like the video frames themselves.
    [result] = manual.edit(engine_first_frame, {"image": upload})
    assert arrays_equal(result, fit_frame(upload, (512, 512), "crop"))
    assert any("transparency" in note for note in fit_uploaded_frame(rgba, engine_first_frame)[1])
    keep, notes = fit_uploaded_frame(upload, engine_first_frame.resize((512, 384)), "keep_aspect")
    assert arrays_equal(keep, fit_frame(upload, (512, 384), "keep_aspect")) and notes


def test_exported_source_frame_round_trips_exactly(engine_first_frame: Image.Image, tmp_path: Path) -> None:
    out = export_source_frame(KITTEN, tmp_path / "source.png")
    exported = load_image(out)
    assert arrays_equal(exported, engine_first_frame)
    manual = get_editor("manual")
    [result] = manual.edit(engine_first_frame, {"image": str(out)})  # uploaded unchanged: nothing to fit
    assert arrays_equal(result, engine_first_frame) and manual.last_notes == []
    before = out.read_bytes()
    with pytest.raises(EditorError, match="already exists"):
        export_source_frame(KITTEN, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.png"]  # no temp files left


def test_keep_aspect_export_matches_engine(tmp_path: Path) -> None:
    out = export_source_frame(KITTEN, tmp_path / "wide.png", width=256, height=256, resize_mode="keep_aspect")
    engine = read_video(KITTEN, frames=16, fps=8, fit=frame_fitter(256, 256, "keep_aspect")).frames[0]
    assert arrays_equal(load_image(out), engine)


def test_manual_has_no_tiny_model(tmp_path: Path) -> None:
    with pytest.raises(EditorError, match="uses no model"):
        get_editor("manual").make_tiny_model(tmp_path / "m")


def test_save_png_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    save_png(Image.new("RGB", (16, 16), "red"), target)
    with pytest.raises(EditorError, match="already exists"):
        save_png(Image.new("RGB", (16, 16), "blue"), target)
    assert load_image(target).getpixel((0, 0)) == (255, 0, 0)
    save_png(Image.new("RGB", (16, 16), "blue"), target, overwrite=True)
    assert load_image(target).getpixel((0, 0)) == (0, 0, 255)
    assert [p.name for p in candidate_paths(tmp_path / "f.png", 3)] == ["f.png", "f-1.png", "f-2.png"]


# ---- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_list() -> None:
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert listed == ["instruct_pix2pix", "nst", "anydoor", "instantid", "manual"]
    for text in ("instruct_pix2pix", "nst", "manual", "--instruction", "--style-image", "timbrooks/instruct-pix2pix"):
        assert text in result.stdout


def test_cli_make_tiny_model_prints_one_line_like_the_engine(tmp_path: Path) -> None:
    """Every make-tiny-model command prints the same kind of line: `wrote a tiny random <model> to <folder>`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    commands = {  # side by side: two processes, one core each
        "editors": [sys.executable, "-m", "editors", "make-tiny-model", "--editor", "instruct_pix2pix",
                    str(tmp_path / "ip2p")],
        "engine": [sys.executable, "-m", "anyv2v", "make-tiny-model", str(tmp_path / "i2v")],
    }
    running = {name: subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, cmd in commands.items()}
    done = {name: (proc.communicate(timeout=120), proc.returncode) for name, proc in running.items()}
    (out, err), code = done["editors"]
    assert code == 0, err
    assert out.strip() == f"wrote a tiny random InstructPix2Pix model to {tmp_path / 'ip2p'}"
    assert "Writing model shards" not in err
    (out, err), code = done["engine"]
    assert code == 0, err
    assert out.strip().startswith("wrote a tiny random I2VGen-XL") and str(tmp_path / "i2v") in out


def test_cli_run_nst_writes_candidates(vgg_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "styled.png"
    args = [
        "run",
        "--editor",
        "nst",
        "--video",
        str(KITTEN),
        "--out",
        str(out),
        "--style-image",
        str(STYLE),
        "--model",
        str(vgg_model),
        "--steps",
        "2",
        "--resolution",
        "32",
        "--width",
        "64",
        "--height",
        "64",
        "--candidates",
        "2",
        "--seed",
        "5",
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress noise when stderr is not a terminal
    written = [tmp_path / "styled.png", tmp_path / "styled-1.png"]
    assert result.stdout.split() == [str(p) for p in written]
    images = [load_image(p) for p in written]
    assert all(i.size == (64, 64) and i.mode == "RGB" for i in images)
    # Candidate i of the CLI is the library's candidate i for seed 5 + i.
    vgg_frame = first_frame(KITTEN, width=64, height=64)
    library = get_editor("nst").edit(
        vgg_frame,
        {"style_image": str(STYLE), "steps": 2, "resolution": 32, "seed": 5},
        candidates=2,
        model=str(vgg_model),
    )
    assert all(arrays_equal(a, b) for a, b in zip(images, library, strict=True))
    # Existing outputs are never replaced without --overwrite.
    before = [p.read_bytes() for p in written]
    again = run_cli(*args)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert [p.read_bytes() for p in written] == before


def test_cli_manual_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    assert cli_main(["export-frame", "--video", str(KITTEN), "--out", str(source)]) == 0
    out = tmp_path / "edited.png"
    result = run_cli(
        "run", "--editor", "manual", "--video", str(KITTEN), "--edited-image", str(source), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert arrays_equal(load_image(out), load_image(source))


BAD_INPUTS = [
    (
        "missing video",
        ["--editor", "nst", "--video", "/nonexistent/clip.mp4", "--style-image", str(STYLE)],
        "does not exist",
    ),
    (
        "missing style image",
        ["--editor", "nst", "--video", str(KITTEN), "--style-image", "/nonexistent/s.png"],
        "does not exist",
    ),
    (
        "empty instruction",
        ["--editor", "instruct_pix2pix", "--video", str(KITTEN), "--instruction", " "],
        "Instruction is empty",
    ),
    (
        "absurd resolution",
        ["--editor", "nst", "--video", str(KITTEN), "--style-image", str(STYLE), "--resolution", "99999"],
        "outside 32..2048",
    ),
    (
        "absurd width",
        ["--editor", "nst", "--image", str(STYLE), "--style-image", str(STYLE), "--width", "100000"],
        "larger than 2048",
    ),
    (
        "image as video",
        ["--editor", "nst", "--video", str(STYLE), "--style-image", str(STYLE)],
        "is an image, not a video",
    ),
    ("unknown editor", ["--editor", "photoshop", "--video", str(KITTEN)], "choose one of"),
    (
        "missing model",
        ["--editor", "nst", "--video", str(KITTEN), "--style-image", str(STYLE), "--model", "./no/such/vgg"],
        "do not exist",
    ),
    (
        "unused flag",
        ["--editor", "nst", "--video", str(KITTEN), "--style-image", str(STYLE), "--instruction", "x"],
        "not an input of the nst editor",
    ),
    (
        "candidates for manual",
        ["--editor", "manual", "--video", str(KITTEN), "--edited-image", str(STYLE), "--candidates", "2"],
        "one result",
    ),
]


def _check_one_error_line(case: str, returncode: int, stderr: str, message: str, folder: Path) -> None:
    assert returncode == 1, (case, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, stderr)
    assert list(folder.iterdir()) == []  # no output, no temp files


@pytest.mark.parametrize("case, extra, message", BAD_INPUTS[:3], ids=[case for case, _, _ in BAD_INPUTS[:3]])
def test_cli_bad_input_subprocess(case: str, extra: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("run", "--out", str(tmp_path / "out.png"), *extra)
    assert "Traceback" not in result.stderr
    _check_one_error_line(case, result.returncode, result.stderr, message, tmp_path)


@pytest.mark.parametrize("case, extra, message", BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_cli_bad_input_is_one_line_and_no_output(
    case: str, extra: list[str], message: str, tmp_path: Path, capsys
) -> None:
    # The same main() as `python -m editors`, in-process (fast) for the full list of cases.
    returncode = cli_main(["run", "--out", str(tmp_path / "out.png"), *extra])
    _check_one_error_line(case, returncode, capsys.readouterr().err, message, tmp_path)


def test_cli_usage_error_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["run", "--editor", "nst", "--out", str(tmp_path / "x.png")])  # neither --video nor --image
    assert exited.value.code == 2 and "one of the arguments --video --image is required" in capsys.readouterr().err


def test_package_exports() -> None:
    assert {"available_editors", "get_editor", "Editor", "EditorError", "EditorInput"} <= set(editors.__all__)


# ---- messages: numbers in text, the user's text quoted short ------------------------------------------------


def test_numbers_in_text_get_one_input_message_and_long_text_is_quoted_short() -> None:
    from anyv2v.errors import quoted
    from editors.base import check_candidates

    steps = EditorInput("steps", "int", "Steps", default=5, minimum=1, maximum=10)
    for text in ("inf", "-inf", "nan", "1e999"):
        with pytest.raises(EditorError, match=rf"Steps must be a finite number, got '{text}'\."):
            steps.coerce(text)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(EditorError, match="candidates must be a whole number"):
            check_candidates(bad)
    for call in (lambda: check_candidates(10**400), lambda: steps.coerce(10**400), lambda: steps.coerce(1e300)):
        with pytest.raises(EditorError) as caught:  # not OverflowError, and not 400 digits echoed back
            call()
        assert len(str(caught.value)) < 200
    huge = "7x" * 50_000  # 100 KB
    frame = Image.new("RGB", (32, 32))
    for call in (lambda: steps.coerce(huge), lambda: get_editor(huge), lambda: fit_uploaded_frame(frame, frame, huge)):
        with pytest.raises(EditorError) as caught:
            call()
        assert len(str(caught.value)) < 300 and "…'" in str(caught.value)
    assert quoted("abc") == "'abc'" and quoted("x" * 81) == "'" + "x" * 80 + "…'" and len(quoted(huge)) == 83
    choice = EditorInput("mode", "choice", "Mode", default="a", choices=("a", "b"))
    assert choice.coerce(" B ") == "b" and choice.coerce(None) == "a"
    with pytest.raises(EditorError, match=r"Mode 'c' is not one of: a, b\."):
        choice.coerce("c")


def test_cli_takes_negative_numbers_as_values() -> None:
    from editors.__main__ import join_negative_values

    assert join_negative_values(["run", "--box", "-10,-10,20,20", "--seed", "-1", "--steps", "3"]) == [
        "run", "--box=-10,-10,20,20", "--seed=-1", "--steps", "3"]
    assert join_negative_values(["run", "--box", "--video", "v.mp4"]) == ["run", "--box", "--video", "v.mp4"]
