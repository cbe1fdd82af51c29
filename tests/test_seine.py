"""The SEINE backbone: its UNet's own parts, the timestep grids of the official code, injection at exactly the
scheduled steps and sites, UNet calls, the cache, the converter and its refusals, bad inputs, the CLI and bench.

Parity of the whole edit with the official code is checked with ../shared/tools/parity (tools/parity_run.py,
README "SEINE"); these tests run offline on a tiny random SEINE written through the converter's writer."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
import torch

from anyv2v.backbones.seine import SeinePlan, ddim_grid, ddpm_grid
from anyv2v.backbones.seine.unet import RelativePositionBias, RotaryEmbedding, SeineUNet3D
from anyv2v.config import EditConfig
from anyv2v.errors import AnyV2VError, ConfigError, ModelLoadError
from anyv2v.sampler import SamplingSettings, sample

from .conftest import REPO

FRAMES, SIZE, STEPS, INVERSION = 4, 64, 10, 20


@pytest.fixture(scope="session")
def tiny_seine(tmp_path_factory):
    from anyv2v.backbones.seine.tiny import make_tiny_seine

    return make_tiny_seine(tmp_path_factory.mktemp("models") / "tiny-seine")


@pytest.fixture(scope="module")
def seine(tiny_seine):
    from anyv2v.pipeline import BACKBONES

    torch.set_num_threads(1)
    return BACKBONES.get(str(tiny_seine), backbone="seine")


def seine_config(model, cache_dir, **changes) -> EditConfig:
    return EditConfig.for_backbone(
        "seine", model=str(model), width=SIZE, height=SIZE, frames=FRAMES, steps=STEPS, inversion_steps=INVERSION,
        cache_dir=str(cache_dir), **changes,
    ).validate()


@pytest.fixture(scope="module")
def inverted(seine, tiny_seine, demo, tmp_path_factory):
    from anyv2v.cache import InversionCache
    from anyv2v.pipeline import get_inversion, prepare_clip, prepare_edit_image

    config = seine_config(tiny_seine, tmp_path_factory.mktemp("cache"))
    clip = prepare_clip(demo / "kitten.mp4", config)
    edited, _ = prepare_edit_image(demo / "edited" / "kitten__dog.png", clip, config)
    inversion, _ = get_inversion(seine, clip, config, InversionCache(config.cache_dir, 2**30), Counter())
    return config, clip, edited, inversion


# ---- the model's own parts ---------------------------------------------------------------------------------


def test_rotary_embedding_rotates_interleaved_pairs_of_the_first_32_channels():
    rotary = RotaryEmbedding(32)
    x = torch.randn(2, 3, 5, 40)  # [batch, heads, frames, head dim]
    y = rotary.rotate(x)
    assert torch.equal(y[..., 32:], x[..., 32:])  # channels past 32 unchanged
    for frame in range(5):
        for pair in (0, 7, 15):
            angle = frame * 10000 ** (-2 * pair / 32)
            a, b = x[..., frame, 2 * pair], x[..., frame, 2 * pair + 1]
            torch.testing.assert_close(y[..., frame, 2 * pair], a * math.cos(angle) - b * math.sin(angle))
            torch.testing.assert_close(y[..., frame, 2 * pair + 1], b * math.cos(angle) + a * math.sin(angle))
    # Frame 0 is not rotated; rotation keeps norms.
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_relative_position_bias_buckets_like_t5():
    bias = RelativePositionBias(heads=2)
    relative = torch.arange(-40, 41)
    buckets = bias.buckets(relative)
    # key before query (negative) -> 0..15, after -> 16 + distance; exact below 8, logarithmic up to 32 frames.
    assert buckets[40].item() == 0 and buckets[39].item() == 1 and buckets[41].item() == 17
    assert buckets[40 - 7].item() == 7 and buckets[40 + 7].item() == 23
    assert buckets[0].item() == 15 and buckets[-1].item() == 31  # far away saturates
    assert int(buckets.min()) >= 0 and int(buckets.max()) <= 31
    values = bias(6, torch.device("cpu"))
    assert values.shape == (2, 6, 6)


def test_unet_takes_9_channels_and_gives_4(seine):
    unet = seine.unet
    assert unet.config.in_channels == 9
    x, text = torch.randn(2, 9, 3, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        out = unet(x, torch.tensor(501), text)
        alone = unet(x[1:], torch.tensor(501), text[1:])
    assert out.shape == (2, 4, 3, 8, 8)
    # Batch items do not mix (the branches of a sampling call share a batch): item 1 alone gives the same.
    torch.testing.assert_close(alone, out[1:], rtol=1e-5, atol=1e-5)


# ---- the official timestep grids ---------------------------------------------------------------------------


def test_grids_match_the_official_code():
    assert ddpm_grid(50)[:3] == [980, 960, 940] and ddpm_grid(50)[-1] == 0
    assert ddim_grid(500)[:3] == [1, 3, 5] and ddim_grid(500)[-1] == 999
    plan = SeinePlan()
    assert plan.save_grid(500, None)[:3] == [1, 5, 9] and max(plan.save_grid(500, None)) == 997
    needed = plan.needed(50, 500)
    assert {981, 961, 1, 997} <= needed and len(needed) == 51  # t+1 of the 50 steps and x_T
    assert plan.start_timestep(ddpm_grid(50), 0, 500, None) == 997  # x_T: the noisiest kept, not 981
    assert plan.start_timestep(ddpm_grid(50), 3, 500, None) == 921
    assert plan.start_timestep(ddpm_grid(10), 0, 40, 20) == 951  # the harness's tiny case
    plan.check(50, 500)
    plan.check(10, 40, 20)


def test_inversion_steps_that_miss_the_edit_are_refused_with_the_values_that_work():
    with pytest.raises(ConfigError) as info:
        SeinePlan().check(50, 400)
    message = str(info.value)
    assert "inversion_steps=400" in message and "use inversion_steps in:" in message and "500" in message
    with pytest.raises(ConfigError, match="inversion_save_steps=30 must be between 1 and inversion_steps=20"):
        SeinePlan().check(10, 20, 30)


def test_ddpm_noise_comes_from_the_seed_or_the_supplied_tensors(seine, inverted):
    config, clip, edited, inversion = inverted
    settings = SamplingSettings.from_config(config, "a dog")
    first = sample(seine, inversion, clip.first_frame, edited, settings)
    again = sample(seine, inversion, clip.first_frame, edited, settings)
    other = sample(seine, inversion, clip.first_frame, edited, dataclasses.replace(settings, seed=2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    shape = first.shape
    zeros = {t: torch.zeros(shape) for t in ddpm_grid(STEPS)}
    noisy = {t: torch.full(shape, 0.5) for t in ddpm_grid(STEPS)}
    a = sample(seine, inversion, clip.first_frame, edited, settings, noise=zeros)
    b = sample(seine, inversion, clip.first_frame, edited, settings, noise=noisy)
    assert not torch.equal(a, b) and not torch.equal(a, first)
    # The noise of step t=0 is never drawn: supplying only t > 0 is enough.
    del zeros[0]
    torch.testing.assert_close(sample(seine, inversion, clip.first_frame, edited, settings, noise=zeros), a, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="no tensor for timestep 900"):
        sample(seine, inversion, clip.first_frame, edited, settings, noise={})


# ---- injection: exactly the scheduled steps and sites --------------------------------------------------------


def test_injection_sites_are_the_official_ones(seine):
    sites = seine.injection_sites()
    assert [s.module_path for s in sites if s.kind == "conv"] == ["up_blocks.1.resnets.1.conv2"]
    spatial = [s.module_path for s in sites if s.kind == "spatial"]
    temporal = [s.module_path for s in sites if s.kind == "temporal"]
    assert spatial[0] == "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert spatial[-1] == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    assert temporal == [p.replace("attn1", "attn_temp") for p in spatial] and len(temporal) == 8


@pytest.mark.parametrize("guidance, branches", [(4.0, 3), (1.0, 2)])
def test_edit_qk_and_conv_equal_source_exactly_at_injected_steps(seine, inverted, guidance, branches):
    config, clip, edited, inversion = inverted
    k = {"conv": 3, "spatial": 2, "temporal": 5}
    injected, seen = Counter(), defaultdict(set)

    def probe(site, state, query, key):
        seen[site.name].add(state.step_index)
        if not state.has_source:
            return
        assert state.names[0] == "source" and state.names[1] == "cond"  # SEINE's batch: [source | cond | uncond]
        for tensor in [query] if key is None else [query, key]:
            chunks = tensor.chunk(state.branches)
            assert len(chunks) == branches
            equal = all(torch.equal(chunks[0], other) for other in chunks[1:])
            assert equal == (state.step_index < k[site.kind]), (site.name, state.step_index)
        if state.step_index < k[site.kind]:
            injected[site.name] += 1

    settings = dataclasses.replace(
        SamplingSettings.from_config(config, "a dog"), guidance=guidance, tau_conv=0.3, tau_sa=0.2, tau_ta=0.5
    )
    calls = Counter()
    sample(seine, inversion, clip.first_frame, edited, settings, calls, probe=probe)
    sites = seine.injection_sites()
    assert len(sites) == 17 and set(seen) == {s.name for s in sites}
    for site in sites:
        assert injected[site.name] == k[site.kind], site.name
        assert seen[site.name] == set(range(STEPS))
    assert calls == Counter({branches: 5, branches - 1: 5})  # the source branch leaves after the last injection


def test_source_branch_reads_t_plus_one_and_starts_from_the_noisiest_kept(seine, inverted):
    config, clip, edited, inversion = inverted
    assert inversion.timesteps == sorted({t + 1 for t in ddpm_grid(STEPS)} | {901})
    read = []

    class Recording(type(inversion)):
        def at(self, timestep):
            read.append(int(timestep))
            return super().at(timestep)

    recording = Recording(latents=inversion.latents, key=inversion.key)
    settings = dataclasses.replace(SamplingSettings.from_config(config, "a dog"), tau_ta=1.0)
    sample(seine, recording, clip.first_frame, edited, settings)
    assert read[:2] == [901, 901]  # x_T: the save grid's (1, 101, ..., 901) noisiest (read for its shape, then used)
    assert read[2:] == [t + 1 for t in ddpm_grid(STEPS)]  # the source branch: 901, 801, ..., 1


def test_tau_zero_and_no_source_branch_change_nothing_but_injection_does(seine, inverted):
    config, clip, edited, inversion = inverted
    base = SamplingSettings.from_config(config, "a dog")
    plain = dataclasses.replace(base, tau_conv=0.0, tau_sa=0.0, tau_ta=0.0)
    without = sample(seine, inversion, clip.first_frame, edited, plain)
    with_source = sample(seine, inversion, clip.first_frame, edited, plain, keep_source_branch=True)
    torch.testing.assert_close(without, with_source, rtol=1e-5, atol=1e-5)
    injected = sample(seine, inversion, clip.first_frame, edited, dataclasses.replace(base, tau_conv=1.0, tau_sa=1.0, tau_ta=1.0))
    assert (injected - without).abs().max() > 1e-3


def test_sequential_branches_equal_batched(seine, inverted):
    from anyv2v.memory import MemoryPlan

    config, clip, edited, inversion = inverted
    settings = dataclasses.replace(SamplingSettings.from_config(config, "a dog"), tau_ta=1.0)
    batched = sample(seine, inversion, clip.first_frame, edited, settings)
    calls = Counter()
    sequential = sample(seine, inversion, clip.first_frame, edited, settings, calls, memory=MemoryPlan.on())
    # fp32 rounding of batch-1 vs batch-3 calls, grown by DDPM's 1/sqrt(alpha) at t=900 on a random model:
    # the parity tolerance (1e-4 + 1e-4 x max|x|), far below what injection changes (1e-3 and up)
    scale = float(batched.abs().max())
    assert float((sequential - batched).abs().max()) <= 1e-4 + 1e-4 * scale, scale
    assert calls == Counter({1: 3 * STEPS})


def test_chunked_feed_forward_and_sliced_attention_equal_plain_and_really_cut(seine):
    from anyv2v.memory import chunked_feed_forward, sliced_attention

    unet = seine.unet
    x, text = torch.randn(1, 9, 4, 8, 8), torch.randn(1, 77, 32)
    rows = Counter()
    handles = [m.to_v.register_forward_hook(lambda mod, args, out, n=name: rows.update([n]))
               for name, m in unet.named_modules() if hasattr(m, "set_processor")]
    ff_calls = Counter()
    handles += [m.ff.register_forward_hook(lambda *_: ff_calls.update(["ff"]))
                for m in unet.modules() if hasattr(m, "set_chunk_feed_forward")]
    processors = unet.attn_processors
    try:
        with torch.no_grad():
            plain = unet(x, torch.tensor(300), text)
            plain_rows, plain_ff = Counter(rows), ff_calls["ff"]
            rows.clear()
            with chunked_feed_forward(unet, max_tokens=16), sliced_attention(unet, max_tokens=16):
                cut = unet(x, torch.tensor(300), text)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(cut, plain, rtol=1e-5, atol=1e-5)
    temporal = "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp"
    spatial = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert plain_rows[temporal] == 1 and rows[temporal] == 64 // 4  # (64 pixels, 4 frames): 4 rows a slice
    assert plain_rows[spatial] == 1 and rows[spatial] == 4  # (4 frames, 64 pixels): one frame a slice
    assert ff_calls["ff"] - plain_ff > 2 * plain_ff  # 46 chunk calls for 16 blocks: one frame a chunk at 64 tokens
    assert all(unet.attn_processors[name] is p for name, p in processors.items())


# ---- end to end: calls per stage, the cache, the record -------------------------------------------------------


def test_edit_counts_calls_reuses_its_cache_and_records_the_backbone(tiny_seine, tiny_model, demo, tmp_path):
    from anyv2v.pipeline import run_edit

    cache = tmp_path / "cache"
    config = seine_config(tiny_seine, cache)
    video, frame = demo / "kitten.mp4", demo / "edited" / "kitten__dog.png"
    first = run_edit(video, frame, "a dog", config, tmp_path / "1.mp4")
    assert not first.inversion_from_cache
    assert first.unet_calls == {"inversion": INVERSION, "sampling": {"3": 5, "2": 5}}  # tau_ta 0.5 of 10
    record = json.loads(first.json_path.read_text())
    assert record["settings"]["backbone"] == "seine" and record["settings"]["guidance"] == 4.0
    assert record["settings"]["negative_prompt"] == ""
    second = run_edit(video, frame, "a cat", config.replace(tau_ta=1.0), tmp_path / "2.mp4")
    assert second.inversion_from_cache and second.unet_calls == {"inversion": 0, "sampling": {"3": STEPS}}
    # The same clip and settings on I2VGen-XL do not read SEINE's entry (and leave it in place).
    other = config.replace(backbone="i2vgen-xl", model=str(tiny_model), guidance=9.0)
    third = run_edit(video, frame, "a dog", other, tmp_path / "3.mp4")
    assert not third.inversion_from_cache and len(list(cache.glob("*.safetensors"))) == 2


def test_cache_key_includes_the_backbone(demo):
    from anyv2v.cache import inversion_key
    from anyv2v.pipeline import inversion_settings, prepare_clip

    config = EditConfig(width=SIZE, height=SIZE, frames=FRAMES)
    clip = prepare_clip(demo / "kitten.mp4", config)
    keys = {name: inversion_key(clip.frames, "same-weights", inversion_settings(config.replace(backbone=name), clip))
            for name in ("i2vgen-xl", "seine")}
    assert keys["i2vgen-xl"] != keys["seine"]


def test_cli_make_tiny_model_edit_and_bench(tmp_path, demo):
    from anyv2v.cli import main

    model = tmp_path / "seine"
    assert main(["make-tiny-model", "--backbone", "seine", str(model)]) == 0
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == "SEINEPipeline"
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    cmd = [
        sys.executable, "-m", "anyv2v", "bench", "--backbone", "seine", "--model", str(model), "--video",
        str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"), "--size", "64x64",
        "--frames", "4", "--steps", "10", "--inversion-steps", "20",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backbone"] == "seine" and report["unet_calls"] == {"inversion": 20, "sampling": {"3": 5, "2": 5}}
    # The official scripts also run a 20-step DDIM reconstruction after the inversion, and keep 3 branches.
    assert report["reference_unet_calls"] == {"inversion": 40, "sampling": {"3": 10}}
    per_call = report["unet_flops_per_call_batch1"]
    assert per_call > 0 and report["flops_per_edit"]["total"] == (20 + 25) * per_call


def test_yaml_backbone_gets_its_defaults_and_flags_win(tmp_path):
    from anyv2v.cli import build_parser, config_from_args

    path = tmp_path / "s.yaml"
    path.write_text("backbone: seine\nmodel: /models/seine\nsteps: 25\n")
    config = config_from_args(build_parser().parse_args(["edit", "--video", "v", "--edited-frame", "e", "--prompt", "p",
                                                         "--config", str(path), "--guidance", "6"]))
    assert (config.backbone, config.steps, config.guidance, config.negative_prompt) == ("seine", 25, 6.0, "")
    with_preset = config_from_args(build_parser().parse_args(["invert", "--video", "v", "--config", str(path), "--preset", "fast"]))
    assert (with_preset.backbone, with_preset.inversion_steps, with_preset.guidance) == ("seine", 100, 4.0)
    flag = config_from_args(build_parser().parse_args(["invert", "--video", "v", "--backbone", "seine"]))
    assert (flag.guidance, flag.negative_prompt, flag.inversion_steps) == (4.0, "", 500)
    with pytest.raises(ConfigError, match="backbone='sora' is not one of i2vgen-xl, seine"):
        EditConfig.load_yaml(_write(tmp_path / "bad.yaml", "backbone: sora\n"))


def _write(path, text):
    path.write_text(text)
    return path


def test_seine_model_env_var_names_the_default_folder(tiny_seine, monkeypatch):
    monkeypatch.setenv("ANYV2V_SEINE_MODEL", str(tiny_seine))
    assert EditConfig(backbone="seine").resolved_model() == str(tiny_seine)
    assert EditConfig(backbone="seine", model="/elsewhere").resolved_model() == "/elsewhere"
    assert EditConfig().resolved_model() == "ali-vilab/i2vgen-xl"  # I2VGen-XL's default is untouched


def test_parity_runner_writes_the_reference_layout(tiny_seine, demo, tmp_path):
    """tools/parity_run.py on a tiny case: the keys, shapes and dtypes of the official run's output."""
    import importlib.util

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from anyv2v.pipeline import prepare_clip, prepare_edit_image

    config = seine_config(tiny_seine, tmp_path / "cache")
    clip = prepare_clip(demo / "kitten.mp4", config)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip.frames):
        frame.save(frames / f"{i:05d}.png")
    edited, _ = prepare_edit_image(demo / "edited" / "kitten__dog.png", clip, config)
    edited.save(tmp_path / "edited.png")
    spec = importlib.util.spec_from_file_location("parity_run", REPO / "tools" / "parity_run.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    noise = tmp_path / "noise.safetensors"
    save_file({f"ddpm_noise.{t}": torch.zeros(1, 4, FRAMES, 8, 8) for t in ddpm_grid(STEPS)[:-1]}, noise)
    base = ["--backbone", "seine", "--model", str(tiny_seine), "--frames-dir", str(frames), "--edited-frame",
            str(tmp_path / "edited.png"), "--prompt", "a dog", "--inversion-steps", "20", "--steps", "10"]
    assert runner.main([*base, "--out", str(tmp_path / "a.safetensors"), "--noise-from", str(noise)]) == 0
    out = load_file(tmp_path / "a.safetensors")
    assert out["frames"].dtype == torch.uint8 and out["frames"].shape == (1, FRAMES, SIZE, SIZE, 3)
    assert out["edited_latents"].shape == (1, 4, FRAMES, 8, 8)
    assert out["edit_timesteps"].tolist() == ddpm_grid(STEPS)
    assert out["injection_timesteps.conv"].tolist() == [900, 800] == out["injection_timesteps.spatial_attn"].tolist()
    assert out["injection_timesteps.temporal_attn"].tolist() == [900, 800, 700, 600, 500]
    assert sorted(int(k.split(".")[1]) for k in out if k.startswith("inverted.")) == [t + 1 for t in reversed(ddpm_grid(STEPS))]
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["injection_events"])["temporal_attn"] == {str(t): 8 for t in (900, 800, 700, 600, 500)}
    assert json.loads(meta["injection_events"]) == json.loads(meta["injection_scheduled"])
    # The supplied noise is used: the generator's noise gives another result.
    assert runner.main([*base, "--out", str(tmp_path / "b.safetensors")]) == 0
    assert not torch.equal(load_file(tmp_path / "b.safetensors")["edited_latents"], out["edited_latents"])


# ---- the converter ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """A tiny `seine.pt` ({"ema": state dict}, as the official file) and an SD-1.4-layout folder to convert from."""
    from anyv2v.backbones.seine.tiny import TINY_UNET
    from anyv2v.tiny import tiny_autoencoder, tiny_clip_text

    root = tmp_path_factory.mktemp("official")
    sd = root / "stable-diffusion-v1-4"
    (sd / "unet").mkdir(parents=True)
    (sd / "unet" / "config.json").write_text(json.dumps({
        "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "act_fn": "silu",
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "downsample_padding": 1, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_scale_factor": 1, "center_input_sample": False,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNET.items()},
    }))
    torch.manual_seed(3)
    tiny_autoencoder(scaling_factor=0.18215).save_pretrained(sd / "vae")
    tokenizer, text_encoder = tiny_clip_text(32)
    tokenizer.save_pretrained(sd / "tokenizer")
    text_encoder.save_pretrained(sd / "text_encoder")
    unet = SeineUNet3D(**TINY_UNET)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save({"ema": unet.state_dict()}, root / "seine.pt")
    return root, sd, unet


def test_convert_seine_writes_a_folder_that_loads_the_same_weights(official_files, tmp_path):
    from anyv2v.backbone import load_backbone
    from anyv2v.cli import main

    root, sd, unet = official_files
    out = tmp_path / "converted"
    assert main(["convert-seine", "--checkpoint", str(root / "seine.pt"), "--sd", str(sd), str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]  # no partial folder left
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # safetensors only
    loaded = load_backbone(str(out), "cpu", "float32", backbone="seine")
    for name, tensor in unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[name], tensor), name
    x, t, text = torch.randn(1, 9, 2, 8, 8), torch.tensor(300), torch.randn(1, 77, 32)
    assert torch.equal(loaded.unet(x, t, text), unet.eval()(x, t, text))
    # Training arguments beside the weights (DiT-style checkpoints) are plain data: accepted.
    import argparse

    with_args = tmp_path / "with-args.pt"
    torch.save({"ema": unet.state_dict(), "args": argparse.Namespace(lr=1e-4, model="UNet")}, with_args)
    assert main(["convert-seine", "--checkpoint", str(with_args), "--sd", str(sd), str(tmp_path / "again")]) == 0
    # An existing non-empty output is never replaced.
    with pytest.raises(AnyV2VError, match="already exists"):
        from anyv2v.backbones.seine.convert import convert_seine

        convert_seine(root / "seine.pt", sd, out)


def test_convert_seine_reads_sd_components_as_safetensors_only(official_files, tmp_path):
    """An SD-1.4 folder whose VAE is only a pickled .bin: refused with what to download, nothing unpickled."""
    from anyv2v.backbones.seine.convert import convert_seine
    from anyv2v.tiny import tiny_autoencoder

    root, sd, unet = official_files
    pickled = tmp_path / "sd-bin"
    shutil.copytree(sd, pickled)
    shutil.rmtree(pickled / "vae")
    tiny_autoencoder(scaling_factor=0.18215).save_pretrained(pickled / "vae", safe_serialization=False)
    assert list((pickled / "vae").glob("*.bin"))
    with pytest.raises(ModelLoadError, match=r"no .safetensors weights in vae/; they are read as safetensors only: "
                                             "download vae/diffusion_pytorch_model.safetensors"):
        convert_seine(root / "seine.pt", pickled, tmp_path / "out")
    assert not (tmp_path / "out").exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_converter_refuses_a_code_running_pickle_and_runs_nothing(official_files, tmp_path):
    from anyv2v.backbones.seine.convert import convert_seine

    root, sd, unet = official_files
    marker = tmp_path / "pwned"
    evil = tmp_path / "seine.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"ema": {"conv_in.weight": torch.zeros(1)}, "hook": _RunsCode(marker)}, handle)
    with pytest.raises(ModelLoadError) as info:
        convert_seine(evil, sd, tmp_path / "out")
    assert "refused" in str(info.value) and "nothing from it was run" in str(info.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, words", [
    ({"model": {}}, "has no 'ema' state dict"),
    ({"ema": {"conv_in.weight": torch.zeros(3, 9, 3, 3)}}, "missing (e.g."),
    ("extra-key", "unexpected (e.g. extra.weight)"),
    ("wrong-shape", "of another shape (e.g. conv_in.weight"),
])
def test_converter_refuses_a_wrong_layout_in_one_line(official_files, tmp_path, content, words):
    from anyv2v.backbones.seine.convert import convert_seine

    root, sd, unet = official_files
    state = dict(unet.state_dict())
    if content == "extra-key":
        content = {"ema": {**state, "extra.weight": torch.zeros(1)}}
    elif content == "wrong-shape":
        content = {"ema": {**state, "conv_in.weight": torch.zeros(32, 4, 3, 3)}}
    path = tmp_path / "seine.pt"
    torch.save(content, path)
    with pytest.raises(ModelLoadError) as info:
        convert_seine(path, sd, tmp_path / "out")
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


# ---- bad inputs: one line naming what to do ---------------------------------------------------------------------


def _cli(argv, cwd):
    done = subprocess.run([sys.executable, "-m", "anyv2v", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines


def _edit_args(demo, tmp_path, *extra):
    return ["edit", "--video", str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
            "--prompt", "a dog", "--size", "64x64", "--frames", "4", "--steps", "10", "--inversion-steps", "20",
            "--out", str(tmp_path / "o.mp4"), "--cache-dir", str(tmp_path / "cache"), *extra]


@pytest.mark.parametrize("case", ["seine-as-i2vgen", "i2vgen-as-seine", "no-seine-model", "missing-unet", "bad-steps"])
def test_bad_backbone_inputs_give_one_line(case, tiny_seine, tiny_model, demo, tmp_path):
    if case == "seine-as-i2vgen":
        extra, words = ["--model", str(tiny_seine)], "holds a seine model, not i2vgen-xl; pass --backbone seine"
    elif case == "i2vgen-as-seine":
        extra, words = ["--backbone", "seine", "--model", str(tiny_model)], "holds a i2vgen-xl model, not seine; pass --backbone i2vgen-xl"
    elif case == "no-seine-model":
        extra, words = ["--backbone", "seine"], "convert the official seine.pt with `python -m anyv2v convert-seine`"
    elif case == "missing-unet":
        broken = tmp_path / "broken"
        shutil.copytree(tiny_seine, broken)
        shutil.rmtree(broken / "unet")
        extra, words = ["--backbone", "seine", "--model", str(broken)], "has no unet/"
    else:
        extra, words = ["--backbone", "seine", "--model", str(tiny_seine), "--inversion-steps", "16"], "use inversion_steps in:"
    code, lines = _cli(_edit_args(demo, tmp_path, *extra), REPO)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "o.mp4").exists()


def test_unknown_backbone_is_refused_by_the_cli(demo, tmp_path):
    code, lines = _cli(_edit_args(demo, tmp_path, "--backbone", "sora"), REPO)
    assert code == 2 and "invalid choice: 'sora'" in lines[-1] and "i2vgen-xl" in lines[-1]
