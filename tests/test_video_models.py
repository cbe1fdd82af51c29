"""The video model as the app offers it (server/video_models.py, server/settings.py): per-backbone model sources,
defaults, inversion-step choices on each backbone's own grid, estimates, and the one-line refusals. No server."""

from __future__ import annotations

import logging

import pytest

from anyv2v.errors import ConfigError
from server import video_models
from server.settings import AppSettings, check_model_source


@pytest.fixture()
def settings(tiny_model, tiny_backbone_env, tmp_path):
    env = {"ANYV2V_MODEL": str(tiny_model), "ANYV2V_OUTPUT_DIR": str(tmp_path / "out"),
           "ANYV2V_CACHE_DIR": str(tmp_path / "cache"), **tiny_backbone_env}
    return AppSettings.from_env(env)


def test_model_sources_come_from_each_backbones_env_var(settings, tiny_model, tiny_backbone_env):
    assert settings.model_for("i2vgen-xl") == str(tiny_model)
    assert settings.model_for("seine") == tiny_backbone_env["ANYV2V_SEINE_MODEL"]
    assert settings.model_for("consisti2v") == tiny_backbone_env["ANYV2V_CONSISTI2V_MODEL"]
    bare = AppSettings.from_env({})
    assert bare.model_for("seine") == "" and bare.model_for("consisti2v") == "TIGER-Lab/ConsistI2V"
    # Each backbone's base config: its defaults under the server's preset, its own model.
    seine, consist = settings.base_config("seine"), settings.base_config("consisti2v")
    assert (seine.backbone, seine.width, seine.guidance, seine.negative_prompt) == ("seine", 512, 4.0, "")
    assert seine.model == tiny_backbone_env["ANYV2V_SEINE_MODEL"] and seine.inversion_steps == 100  # "fast"
    assert (consist.width, consist.height, consist.guidance, consist.start_index) == (256, 256, 35.0, 4)
    assert consist.source_branch_frame == "edited"
    assert settings.base_config().backbone == "i2vgen-xl" and settings.base_config().guidance == 9.0


def test_labels_and_an_unknown_backbone_in_one_line():
    assert video_models.choices() == [("I2VGen-XL (default)", "i2vgen-xl"), ("SEINE", "seine"),
                                      ("ConsistI2V", "consisti2v")]
    assert video_models.check_backbone(None) == video_models.check_backbone(" ") == "i2vgen-xl"
    assert video_models.check_backbone("SEINE") == "seine"
    with pytest.raises(ConfigError) as info:
        video_models.check_backbone("sora")
    assert str(info.value) == ("backbone 'sora' is not a video model of this app; use one of i2vgen-xl, seine, "
                               "consisti2v (default i2vgen-xl).")


def test_a_model_not_configured_here_is_one_user_sentence_with_details_in_the_log(tmp_path, tiny_model, caplog):
    from server.service import EditService

    bare = AppSettings(model=str(tiny_model), output_dir=str(tmp_path / "out"))
    problem = video_models.configuration_problem(bare, "seine")
    assert "ANYV2V_SEINE_MODEL" in problem and "convert-seine" in problem
    assert video_models.configuration_problem(bare, "consisti2v") is None  # a hub id: checked at start-up
    missing = bare.replace(backbone_models={"consisti2v": str(tmp_path / "gone")})
    assert "gone does not exist" in video_models.configuration_problem(missing, "consisti2v")
    wrong = bare.replace(backbone_models={"seine": str(tiny_model)})  # an I2VGen-XL folder given as SEINE
    assert "holds a i2vgen-xl model, not seine" in video_models.configuration_problem(wrong, "seine")
    sentence = "SEINE is not enabled on this server; the operator can enable it (the server log says how)."
    assert video_models.defaults_note(bare, "seine") == sentence
    config = bare.base_config("seine")
    service = EditService(bare)
    with caplog.at_level(logging.WARNING, logger="anyv2v.app"):
        with pytest.raises(ConfigError) as info:
            service.edit_video("clip.mp4", "frame.png", "a prompt", config, None, __import__("threading").Event())
    assert str(info.value) == sentence
    assert "ANYV2V_SEINE_MODEL" in caplog.text  # the operator's details: in the log only


def test_start_up_checks_each_backbones_source(settings, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="anyv2v.app"):
        assert video_models.log_sources(settings) == {"seine": None, "consisti2v": None}
        problems = video_models.log_sources(settings.replace(backbone_models={"seine": str(tmp_path / "nope")}))
    assert "nope does not exist" in problems["seine"] and "ANYV2V_SEINE_MODEL" in problems["seine"]
    assert "ANYV2V_CONSISTI2V_MODEL" in problems["consisti2v"]  # the hub id, not downloaded, offline
    assert "video model SEINE cannot be loaded" in caplog.text
    assert check_model_source("", backbone="seine").startswith("The video model seine has no model on this server")


def test_inversion_step_choices_follow_the_backbone(settings):
    # I2VGen-XL and ConsistI2V: DDIM inversion whose grid contains the 10 sampling steps' timesteps.
    for name in ("i2vgen-xl", "consisti2v"):
        choices = video_models.inversion_choices(settings, name, 10)
        assert 10 in choices and 20 in choices and 7 not in choices
    # SEINE: 10 DDPM steps read t+1 (901, 801, ...) from the kept grid, half of the inversion steps.
    seine = video_models.inversion_choices(settings, "seine", 10)
    assert 10 not in seine and seine[:2] == [20, 40]
    assert video_models.derive_inversion_steps(settings, "seine", 10, 100) == 100
    assert video_models.derive_inversion_steps(settings, "seine", 10, 12) == 20
    assert video_models.derive_inversion_steps(settings, "i2vgen-xl", 10, 12) == 10
    # Without a readable model (SEINE not configured), its default grid.
    assert video_models.inversion_choices(AppSettings(), "seine", 10) == seine


def test_the_page_applies_a_backbones_defaults_and_says_so(settings):
    values = video_models.page_defaults(settings, "consisti2v")
    assert (values["width"], values["height"], values["guidance"], values["start_index"]) == (256, 256, 35.0, 4)
    assert values["inversion_steps"] in video_models.inversion_choices(settings, "consisti2v", values["steps"])
    assert video_models.defaults_note(settings, "consisti2v").startswith(
        "Applied ConsistI2V's defaults: 256×256, 16 frames, 50 steps (100 inversion steps), guidance 35, start index 4")
    assert "no negative prompt" in video_models.defaults_note(settings, "seine")
    small = settings.replace(max_size=128, max_frames=8)
    assert video_models.page_defaults(small, "seine")["width"] == 128
    assert video_models.page_defaults(small, "seine")["frames"] == 8


def test_api_defaults_stand_for_the_backbones_own(settings):
    given = {"guidance": 9.0, "width": 512, "start_index": 0, "negative_prompt": settings.base_config().negative_prompt,
             "tau_conv": 0.2, "seed": 8888}
    consist = video_models.api_values(settings, "consisti2v", given)
    assert consist["guidance"] is None and consist["width"] is None and consist["start_index"] is None
    assert consist["tau_conv"] == 0.2 and consist["seed"] == 8888  # the same default on both: kept
    assert consist["negative_prompt"] == given["negative_prompt"]  # ConsistI2V's is I2VGen-XL's
    assert video_models.api_values(settings, "seine", given)["negative_prompt"] is None  # SEINE's is empty
    assert video_models.api_values(settings, "i2vgen-xl", given) == given
    assert video_models.api_values(settings, "consisti2v", {**given, "guidance": 12.0})["guidance"] == 12.0


def test_build_config_and_estimates_per_backbone(settings):
    from server.checks import build_config
    from server.step_timing import edit_stage_flops

    config = build_config(settings, backbone="consisti2v", width=64, height=64, frames=8, steps=10,
                          inversion_steps=10)
    assert config.backbone == "consisti2v" and config.guidance == 35.0
    with pytest.raises(ConfigError, match="is not a video model"):
        build_config(settings, backbone="nope")
    flops = {name: edit_stage_flops(build_config(settings, backbone=name, width=64, height=64, frames=8, steps=10,
                                                 inversion_steps=20, start_index=0), 8, (64, 64))
             for name in video_models.names()}
    assert all(f is not None and f["inversion"] > 0 for f in flops.values())
    assert len({f["inversion"] for f in flops.values()}) == 3  # each backbone's own UNet
    assert edit_stage_flops(AppSettings().base_config("seine"), 8, (64, 64)) is None  # no model: no estimate


def test_estimates_keep_each_video_models_pace(settings):
    """A measured I2VGen-XL edit estimates itself "about"; a SEINE edit of the same size borrows that pace per
    FLOP only as a range that says so, until SEINE itself was measured."""
    from pathlib import Path

    from anyv2v.pipeline import EditResult
    from server.checks import build_config
    from server.step_timing import EditTimings

    configs = {name: build_config(settings, backbone=name, width=64, height=64, frames=8, steps=10, inversion_steps=20,
                                  start_index=0) for name in ("i2vgen-xl", "seine")}
    timings = EditTimings()

    def record(name, seconds):
        result = EditResult(Path("a.mp4"), Path("a.json"), False, {"inversion": 20, "sampling": {"3": 5, "2": 5}},
                            {"inversion": seconds, "sampling": 2 * seconds}, [], 8, (64, 64), 8)
        timings.record_edit(configs[name], result, "cpu")

    record("i2vgen-xl", 10.0)
    own = timings.estimate_edit(configs["i2vgen-xl"], 8, (64, 64), "cpu")
    assert own.exact and own.same_model and own.seconds == pytest.approx(30.0)
    borrowed = timings.estimate_edit(configs["seine"], 8, (64, 64), "cpu")
    assert not borrowed.exact and not borrowed.same_model and borrowed.high / borrowed.low > 2
    assert "measured here with another video model" in timings.text(configs["seine"], 8, (64, 64), "cpu", True)
    record("seine", 50.0)  # SEINE measured: its own pace, and I2VGen-XL's estimate is untouched
    seine = timings.estimate_edit(configs["seine"], 8, (64, 64), "cpu")
    assert seine.exact and seine.seconds == pytest.approx(150.0)
    assert timings.estimate_edit(configs["i2vgen-xl"], 8, (64, 64), "cpu").seconds == pytest.approx(30.0)

    # A model whose first edit reused a cached inversion (sampling timed only) uses its own sampling pace for
    # the inversion before another model's inversion pace.
    from server.step_timing import StepTimings

    paces = StepTimings()
    flops = {"inversion": 1e9, "sampling": 1e9}
    paces.record("cpu", (8, 64, 64), flops, {"inversion": 10.0, "sampling": 20.0}, "i2vgen-xl")
    paces.record("cpu", (8, 64, 64), {"sampling": 1e9}, {"sampling": 40.0}, "seine")
    estimate = paces.estimate("cpu", (8, 64, 64), flops, "seine")
    assert estimate.same_model and not estimate.exact and estimate.seconds == pytest.approx(80.0)


def _page_fn(demo, name):
    found = [fn for fn in demo.fns.values() if fn.fn is not None and fn.fn.__name__ == name]
    assert len(found) == 1, name
    return found[0]


def test_the_pages_video_model_choice(settings, tiny_model, tmp_path):
    """The "Video model" dropdown: choosing one sets its defaults (and says so), the inversion steps follow its
    grid when the steps change; an unconfigured one only says that the operator can enable it."""
    import app as webapp

    demo = webapp.build_app(settings.replace(output_dir=str(tmp_path / "out")), model_problem=None)
    dropdown = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "video-model"][0]
    assert [c[1] for c in dropdown.choices] == ["i2vgen-xl", "seine", "consisti2v"] and dropdown.value == "i2vgen-xl"
    chosen = _page_fn(demo, "on_video_model")
    outputs = chosen.fn("consisti2v")
    by_id = {getattr(block, "elem_id", None): value for block, value in zip(chosen.outputs, outputs)}
    assert by_id["width"] == by_id["height"].value == 256 and by_id["guidance"] == 35.0
    assert "256×256 is ConsistI2V's size" in by_id["height"].info and by_id["frames"].value == 16  # said in step 1
    assert by_id["start-index"].value == 4 and by_id["inversion-steps"].value == 100
    assert by_id["video-model-note"].startswith("Applied ConsistI2V's defaults")
    steps = _page_fn(demo, "on_steps")
    inversion, _ = steps.fn(10, "custom", 10, 0, "seine")
    assert inversion.value == 20 and 10 not in [c[1] for c in inversion.choices]
    inversion, _ = steps.fn(10, "custom", 10, 0, "i2vgen-xl")
    assert inversion.value == 10

    bare = webapp.build_app(AppSettings(model=str(tiny_model), output_dir=str(tmp_path / "out2")), model_problem=None)
    outputs = _page_fn(bare, "on_video_model").fn("seine")
    assert outputs[-1] == video_models.unavailable_sentence("seine")
    assert all(isinstance(value, type(webapp.gr.skip())) for value in outputs[:-1])  # nothing else changes
