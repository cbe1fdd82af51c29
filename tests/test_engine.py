"""The engine end to end on real demo clips with a tiny random I2VGen-XL loaded from disk."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter, defaultdict

import av
import pytest
import torch

from anyv2v.backbone import load_backbone
from anyv2v.cache import InversionCache
from anyv2v.config import EditConfig
from anyv2v.injection import InjectionSchedule, injection_sites
from anyv2v.pipeline import BACKBONES, run_edit
from anyv2v.sampler import SamplingSettings, sample
from anyv2v.schedule import sampling_timesteps

from . import engine_helpers
from .conftest import REPO
from .engine_helpers import FRAMES, SIZE

STEPS = 10


def small_config(tiny_model, cache_dir, **changes) -> EditConfig:
    return engine_helpers.small_config(tiny_model, cache_dir, STEPS).replace(**changes).validate()


def probe_video(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "frames": frames,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "fps": float(stream.average_rate),
            "codec": stream.codec_context.name,
            "audio": bool(container.streams.audio),
        }


def settings_for(config: EditConfig, **changes) -> SamplingSettings:
    settings = SamplingSettings.from_config(config, "a dog turning its head on a wooden floor")
    return dataclasses.replace(settings, **changes)


# ---- the CLI writes what was asked --------------------------------------------------------------------


def test_cli_edit_writes_video_json_and_audio(tiny_model, demo, tmp_path):
    out = tmp_path / "robot.mp4"
    cmd = [
        sys.executable, "-m", "anyv2v", "edit", "--video", str(demo / "old_man.mp4"),
        "--edited-frame", str(demo / "edited" / "old_man__robot.png"), "--prompt", "a robot doing exercises",
        "--out", str(out), "--model", str(tiny_model), "--size", "64x48", "--frames", "6", "--fps", "4",
        "--steps", "10", "--inversion-steps", "10", "--keep-audio", "--cache-dir", str(tmp_path / "cache"),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = probe_video(out)
    assert info == {"frames": 6, "size": (64, 48), "fps": 4.0, "codec": "h264", "audio": True}
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert abs(float(audio.duration * audio.time_base) - 1.5) < 0.1  # 6 frames at 4 fps, trimmed
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["frames"] == 6 and record["size"] == [64, 48] and record["fps"] == 4
    assert record["inversion_from_cache"] is False
    assert record["unet_calls"] == {"inversion": 10, "sampling": {"3": 5, "2": 5}}  # tau_ta 0.5 of 10 steps
    assert record["seed"] == 8888 and record["model"] == tiny_model.name  # a local folder by name only
    assert set(record["seconds"]) >= {"prepare", "load", "inversion", "sampling", "decode", "write"}
    assert {"torch", "diffusers", "transformers", "anyv2v"} <= set(record["versions"])
    assert "edited frame was 512x512" in " ".join(record["notes"])


def test_edit_without_audio_when_not_asked(tiny_model, demo, tmp_path):
    config = small_config(tiny_model, tmp_path / "cache", frames=4)
    result = run_edit(demo / "old_man.mp4", demo / "edited" / "old_man__robot.png", "a robot", config, tmp_path / "o.mp4")
    assert probe_video(result.video_path)["audio"] is False


# ---- injection: exact sites, steps and counts -----------------------------------------------------------


def test_injection_schedule_counts_like_the_reference():
    assert InjectionSchedule.from_taus(50, 0.58, 0.2, 0.5) == InjectionSchedule(50, 28, 10, 25)
    schedule = InjectionSchedule.from_taus(10, 0.3, 0.2, 1.0)
    assert [schedule.at(i).conv for i in range(10)] == [True] * 3 + [False] * 7
    assert schedule.last_step == 10


def test_injection_sites_are_the_papers(backbone):
    sites = injection_sites(backbone.unet)
    assert [s.module_path for s in sites if s.kind == "conv"] == ["up_blocks.1.resnets.1.conv2"]
    spatial = [s.module_path for s in sites if s.kind == "spatial"]
    assert len(spatial) == 8 and spatial[0] == "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert spatial[-1] == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    temporal = [s.module_path for s in sites if s.kind == "temporal"]
    assert temporal[2] == "up_blocks.2.temp_attentions.0.transformer_blocks.0.attn1"


@pytest.mark.parametrize("guidance, branches", [(9.0, 3), (1.0, 2)])
def test_edit_qk_equal_source_exactly_at_injected_steps(backbone, kitten, guidance, branches):
    config, clip, edited, inversion = kitten
    taus = {"tau_conv": 0.3, "tau_sa": 0.2, "tau_ta": 0.5}
    k = {"conv": 3, "spatial": 2, "temporal": 5}
    injected = Counter()
    seen = defaultdict(set)

    def probe(site, state, query, key):
        seen[site.name].add(state.step_index)
        tensors = [query] if key is None else [query, key]
        if not state.has_source:
            return
        for tensor in tensors:
            chunks = tensor.chunk(state.branches)
            assert len(chunks) == branches
            equal = all(torch.equal(chunks[0], other) for other in chunks[1:])
            should = state.step_index < k[site.kind]
            assert equal == should, (site.name, state.step_index)
        if state.step_index < k[site.kind]:
            injected[site.name] += 1

    calls = Counter()
    sample(backbone, inversion, clip.first_frame, edited, settings_for(config, guidance=guidance, **taus), calls, probe=probe)
    sites = injection_sites(backbone.unet)
    assert len(seen) == len(sites) == 17
    for site in sites:
        assert injected[site.name] == k[site.kind], site.name
        assert seen[site.name] == set(range(STEPS))
    # The source branch runs while any kind injects (5 steps) and leaves the batch after.
    assert calls == Counter({branches: 5, branches - 1: 5})


def test_start_index_cuts_the_full_schedule(backbone, kitten):
    config, clip, edited, inversion = kitten
    injected = Counter()

    def probe(site, state, query, key):
        if state.has_source and state.injection.enabled(site.kind):
            injected[site.kind] += 1

    calls = Counter()
    settings = settings_for(config, start_index=3, tau_conv=0.2, tau_sa=0.4, tau_ta=0.6)
    sample(backbone, inversion, clip.first_frame, edited, settings, calls, probe=probe)
    # k over the full 10 steps (2, 4, 6); steps 3..9 run, so spatial injects at 3 and temporal at 3, 4, 5.
    assert injected == Counter({"spatial": 1 * 8, "temporal": 3 * 8})
    assert calls == Counter({3: 3, 2: 4})


def test_tau_zero_is_plain_i2v_sampling_from_the_inverted_latent(backbone, kitten):
    """With every tau 0 the source branch never runs and the result is diffusers' I2VGen-XL sampling."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline

    config, clip, edited, inversion = kitten
    settings = settings_for(config, tau_conv=0.0, tau_sa=0.0, tau_ta=0.0)
    calls = Counter()
    ours = sample(backbone, inversion, clip.first_frame, edited, settings, calls)
    assert calls == Counter({2: STEPS})

    pipe = I2VGenXLPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer,
        image_encoder=backbone.image_encoder, feature_extractor=backbone.feature_extractor, unet=backbone.unet,
        scheduler=DDIMScheduler.from_config(backbone.scheduler_config),
    )
    pipe.set_progress_bar_config(disable=True)
    start = sampling_timesteps(backbone.scheduler_config, STEPS)[0]
    torch.manual_seed(config.seed)  # the pipeline samples the first-frame VAE latent from the global RNG
    reference = pipe(
        prompt_embeds=backbone.encode_prompt([settings.prompt]),
        negative_prompt_embeds=backbone.encode_prompt([settings.negative_prompt]),
        image=edited, height=SIZE, width=SIZE, target_fps=config.fps, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=config.guidance, latents=inversion.at(start).clone(),
        output_type="latent",
    ).frames
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_dropping_the_source_branch_changes_nothing(backbone, kitten):
    config, clip, edited, inversion = kitten
    settings = settings_for(config, tau_conv=0.2, tau_sa=0.2, tau_ta=0.5)
    dropped, kept = Counter(), Counter()
    fast = sample(backbone, inversion, clip.first_frame, edited, settings, dropped)
    slow = sample(backbone, inversion, clip.first_frame, edited, settings, kept, keep_source_branch=True)
    assert dropped == Counter({3: 5, 2: 5}) and kept == Counter({3: 10})
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_injection_changes_the_result(backbone, kitten):
    config, clip, edited, inversion = kitten
    plain = sample(backbone, inversion, clip.first_frame, edited, settings_for(config, tau_conv=0, tau_sa=0, tau_ta=0))
    injected = sample(backbone, inversion, clip.first_frame, edited, settings_for(config, tau_conv=1, tau_sa=1, tau_ta=1))
    assert (plain - injected).abs().max() > 1e-3


def test_same_seed_same_output_other_seed_differs(backbone, kitten):
    config, clip, edited, inversion = kitten
    settings = settings_for(config, random_ratio=0.3)
    first = sample(backbone, inversion, clip.first_frame, edited, settings)
    second = sample(backbone, inversion, clip.first_frame, edited, settings)
    other = sample(backbone, inversion, clip.first_frame, edited, settings_for(config, random_ratio=0.3, seed=1))
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


# ---- the UNet is left as it was ---------------------------------------------------------------------------


def unet_plugins(unet):
    processors = dict(unet.attn_processors)
    hooks = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in unet.named_modules()}
    return processors, hooks


def test_unet_unchanged_after_edit_and_after_failed_edit(backbone, kitten):
    config, clip, edited, inversion = kitten
    before = unet_plugins(backbone.unet)
    sample(backbone, inversion, clip.first_frame, edited, settings_for(config))
    after = unet_plugins(backbone.unet)
    assert after[0].keys() == before[0].keys()
    assert all(after[0][k] is before[0][k] for k in before[0])
    assert after[1] == before[1]

    def failing_probe(site, state, query, key):
        if state.step_index == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sample(backbone, inversion, clip.first_frame, edited, settings_for(config), probe=failing_probe)
    failed = unet_plugins(backbone.unet)
    assert all(failed[0][k] is before[0][k] for k in before[0])
    assert failed[1] == before[1]


# ---- the inversion cache ----------------------------------------------------------------------------------


def test_second_edit_reuses_the_inversion_and_changed_settings_do_not(tiny_model, demo, tmp_path):
    cache = tmp_path / "cache"
    config = small_config(tiny_model, cache, frames=4)
    video, frame = demo / "couple.mp4", demo / "edited" / "couple__snowing.png"
    first = run_edit(video, frame, "a couple, snowing", config, tmp_path / "1.mp4")
    assert not first.inversion_from_cache and first.unet_calls["inversion"] == STEPS
    second = run_edit(video, frame, "a couple, sketch style", config.replace(tau_ta=1.0, guidance=5), tmp_path / "2.mp4")
    assert second.inversion_from_cache and second.unet_calls["inversion"] == 0
    assert json.loads(second.json_path.read_text())["inversion_from_cache"] is True
    for change in ({"inversion_steps": 20}, {"width": 72}, {"frames": 5}, {"seed": 1}, {"fps": 4}):
        result = run_edit(video, frame, "a couple", config.replace(**change), tmp_path / f"{len(change)}-{list(change)[0]}.mp4")
        assert not result.inversion_from_cache, change
        assert result.unet_calls["inversion"] == config.replace(**change).inversion_steps
    assert len(list(cache.glob("*.safetensors"))) == 6


def test_cache_evicts_least_recently_used(tmp_path):
    from anyv2v.cache import Inversion

    one_mb = {t: torch.zeros(1, 4, 2, 128, 128) for t in (1, 3)}  # 2 x 512 KiB
    cache = InversionCache(tmp_path, max_bytes=int(2.5 * 2**20))
    for key in ("a", "b"):
        assert cache.put(Inversion(one_mb, key))
    assert cache.get("a") is not None  # "a" is now more recently used than "b"
    cache.put(Inversion(one_mb, "c"))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.size() <= cache.max_bytes
    assert not cache.put(Inversion({t: torch.zeros(1, 4, 8, 128, 128) for t in (1, 3)}, "huge"))  # over budget
    assert not list(tmp_path.glob(".*.part"))


def _writer(directory: str, key: str) -> None:
    from anyv2v.cache import Inversion, InversionCache

    cache = InversionCache(directory, max_bytes=int(3.5 * 2**20))
    for round_ in range(5):
        cache.put(Inversion({t: torch.full((1, 4, 2, 128, 128), float(round_)) for t in (1, 3)}, f"{key}{round_ % 3}"))


def test_cache_is_safe_with_two_processes(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(tmp_path), key)) for key in ("x", "y")]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    cache = InversionCache(tmp_path, max_bytes=int(3.5 * 2**20))
    assert cache.size() <= cache.max_bytes
    for path, _, _ in cache.entries():
        assert cache.get(path.stem) is not None  # every file left is complete
    assert not list(tmp_path.glob(".*.part"))


# ---- long clips and settings ------------------------------------------------------------------------------


def test_more_than_16_frames(tiny_model, demo, tmp_path):
    config = small_config(tiny_model, tmp_path / "cache", frames=0, fps=12, tau_ta=1.0)  # whole 2 s clip at 12 fps
    result = run_edit(demo / "ballet.mp4", demo / "edited" / "ballet__van_gogh.png", "ballet", config, tmp_path / "b.mp4")
    assert result.frames == 24
    assert probe_video(result.video_path)["frames"] == 24


def test_keep_aspect_mode_on_a_wide_video(tiny_model, tmp_path):
    import numpy as np
    from PIL import Image

    from anyv2v.video import write_video

    wide = [Image.fromarray(np.full((90, 160, 3), 10 * i, dtype=np.uint8)) for i in range(8)]
    source = write_video(wide, tmp_path / "wide.mp4", 8)
    config = small_config(tiny_model, tmp_path / "cache", frames=4, width=128, height=128, resize_mode="keep_aspect")
    edited = wide[0].resize((320, 180))
    result = run_edit(source, edited, "a gradient", config, tmp_path / "o.mp4")
    assert result.size == (128, 72)  # 16:9 with the long side 128, both multiples of 8
    assert probe_video(result.video_path)["size"] == (128, 72)
    assert "160x90 source (aspect 1.778) is worked on at 128x72 (aspect 1.778" in " ".join(result.notes)


def test_config_yaml_round_trip_and_presets(tmp_path):
    from anyv2v.config import preset_config

    config = EditConfig(tau_conv=0.1, steps=25)
    config.save_yaml(tmp_path / "c.yaml")
    assert EditConfig.load_yaml(tmp_path / "c.yaml") == config
    assert preset_config("fast").inversion_steps == 100
    assert preset_config("paper") == EditConfig()
    (tmp_path / "p.yaml").write_text("preset: fast\ntau_ta: 1.0\n")
    loaded = EditConfig.load_yaml(tmp_path / "p.yaml")
    assert loaded.inversion_steps == 100 and loaded.tau_ta == 1.0


def test_model_loads_through_the_real_loader(tiny_model):
    backbone = load_backbone(str(tiny_model))
    assert type(backbone.unet).__name__ == "I2VGenXLUNet"
    assert type(backbone.text_encoder).__name__ == "CLIPTextModel"
    assert type(backbone.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert backbone.dtype == torch.float32 and backbone.device.type == "cpu"
    assert backbone.encode_prompt(["a cat"]).shape == (1, 77, 32)


# ---- invert ahead of time, and bench -------------------------------------------------------------------


def test_invert_fills_the_cache_that_edit_then_uses(tiny_model, demo, tmp_path, capsys):
    from anyv2v.cli import main

    common = ["--model", str(tiny_model), "--size", "64x64", "--frames", "4", "--inversion-steps", "10",
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["invert", "--video", str(demo / "kitten.mp4"), *common]) == 0
    assert "inverted with 10 UNet calls and cached" in capsys.readouterr().out
    out = tmp_path / "dog.mp4"
    assert main(["edit", "--video", str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
                 "--prompt", "a dog", "--out", str(out), "--steps", "10", *common]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["inversion_from_cache"] is True and record["unet_calls"]["inversion"] == 0


def test_bench_prints_calls_flops_seconds_and_memory(tiny_model, demo, capsys):
    from anyv2v.bench import unet_flops_per_call
    from anyv2v.cli import main

    argv = ["bench", "--video", str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
            "--model", str(tiny_model), "--size", "64x64", "--frames", "4", "--steps", "10", "--inversion-steps", "10"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unet_calls"] == {"inversion": 10, "sampling": {"3": 5, "2": 5}}
    per_call = report["unet_flops_per_call_batch1"]
    assert per_call > 0
    assert report["flops_per_edit"] == {
        "inversion": 10 * per_call, "sampling": (3 * 5 + 2 * 5) * per_call, "total": (10 + 25) * per_call,
    }
    assert set(report["seconds"]) >= {"inversion", "sampling", "decode"}
    assert report["peak_memory"]["bytes"] > 0
    # FLOPs grow with the clip: twice the frames, about twice the work.
    config = dict(BACKBONES.get(str(tiny_model)).unet.config)
    assert 1.8 < unet_flops_per_call(config, 8, 64, 64) / unet_flops_per_call(config, 4, 64, 64) < 2.2


def test_progress_reports_each_stage(tiny_model, demo, tmp_path):
    config = small_config(tiny_model, tmp_path / "cache", frames=4)
    reports: list[tuple[str, int, int]] = []
    video, frame = demo / "kitten.mp4", demo / "edited" / "kitten__dog.png"
    run_edit(video, frame, "a dog", config, tmp_path / "1.mp4", progress=lambda *r: reports.append(r))
    assert [r for r in reports if r[0] == "inversion"] == [("inversion", i, STEPS) for i in range(1, STEPS + 1)]
    assert [r for r in reports if r[0] == "sampling"] == [("sampling", i, STEPS) for i in range(1, STEPS + 1)]
    reports.clear()
    run_edit(video, frame, "a dog", config, tmp_path / "2.mp4", progress=lambda *r: reports.append(r))
    assert reports[0] == ("inversion_cached", 1, 1) and not [r for r in reports if r[0] == "inversion"]


def test_cli_settings_precedence(tmp_path):
    from anyv2v.cli import build_parser, config_from_args

    (tmp_path / "c.yaml").write_text("preset: fast\ntau_ta: 1.0\nsteps: 25\n")
    parse = lambda *argv: config_from_args(build_parser().parse_args(["invert", "--video", "v.mp4", *argv]))  # noqa: E731
    from_file = parse("--config", str(tmp_path / "c.yaml"))
    assert (from_file.inversion_steps, from_file.tau_ta, from_file.steps) == (100, 1.0, 25)
    preset_flag = parse("--preset", "paper", "--config", str(tmp_path / "c.yaml"), "--seed", "3")
    assert (preset_flag.inversion_steps, preset_flag.tau_ta, preset_flag.seed) == (500, 1.0, 3)
    (tmp_path / "bad.yaml").write_text("tau_typo: 1\n")
    with pytest.raises(Exception, match="unknown setting"):
        parse("--config", str(tmp_path / "bad.yaml"))
