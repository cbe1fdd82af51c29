"""Long clips at bounded memory (same output), the real-size model configs, the bench sweep, the cache policy."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import av
import pytest
import torch

from anyv2v.attention import slice_rows
from anyv2v.cache import Inversion, InversionCache
from anyv2v.config import EditConfig
from anyv2v.injection import injection_sites
from anyv2v.memory import MemoryPlan, chunked_feed_forward, feed_forward_chunk, plan_memory, sliced_attention
from anyv2v.pipeline import get_inversion, prepare_clip, run_edit
from anyv2v.sampler import SamplingSettings, sample
from anyv2v.schedule import sampling_timesteps

from . import engine_helpers
from .engine_helpers import FRAMES, SIZE

STEPS = 5

# ali-vilab/i2vgen-xl unet/config.json on the hub (without the "_" keys), as published.
HUB_UNET_CONFIG = json.loads("""{
  "attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
  "in_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "num_attention_heads": 64, "out_channels": 4,
  "sample_size": 32, "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"]
}""")


def small_config(tiny_model, cache_dir, **changes) -> EditConfig:
    return engine_helpers.small_config(tiny_model, cache_dir, STEPS).replace(**changes).validate()


# ---- real-size configs, counted on the meta device ----------------------------------------------------------


def test_real_size_unet_config_is_the_hubs_with_1_42_b_parameters():
    from anyv2v.tiny import I2VGEN_XL_UNET, real_size_unet_on_meta

    assert I2VGEN_XL_UNET == HUB_UNET_CONFIG
    unet = real_size_unet_on_meta()
    written = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    for key, value in HUB_UNET_CONFIG.items():
        assert (list(written[key]) if isinstance(value, list) else written[key]) == value, key
    params = sum(p.numel() for p in unet.parameters())
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert round(params / 1e9, 2) == 1.42


# ---- sequential branches == batched, at every injection site and step ----------------------------------------


def recording_probe(store):
    def probe(site, state, query, key):
        for index, name in enumerate(state.names):
            tensors = [t.chunk(state.branches)[index].clone() for t in ([query] if key is None else [query, key])]
            store[(site.name, state.step_index, name)] = tensors

    return probe


def test_sequential_branches_equal_batched_with_injection_at_every_site_and_step(backbone, kitten):
    config, clip, edited, inversion = kitten
    taus = {"tau_conv": 0.4, "tau_sa": 0.2, "tau_ta": 0.6}
    injected_steps = {"conv": 2, "spatial": 1, "temporal": 3}
    settings = dataclasses.replace(SamplingSettings.from_config(config, "a dog"), **taus)
    batched_features: dict = {}
    sequential_features: dict = {}
    batched_calls, sequential_calls = Counter(), Counter()
    batched = sample(backbone, inversion, clip.first_frame, edited, settings, batched_calls,
                     probe=recording_probe(batched_features))
    # Every option on, attention sliced hard: spatial (8 frames, 64 tokens) 1 frame at a time, temporal 8 rows.
    plan = dataclasses.replace(MemoryPlan.on(), attention_tokens=64)
    full_resolution = {site.name: site for site in injection_sites(backbone.unet) if site.layer == 9}
    slices: Counter = Counter()
    hooks = [backbone.unet.get_submodule(site.module_path).to_v.register_forward_hook(
        lambda *_, n=name: slices.update([n])) for name, site in full_resolution.items()]
    try:
        sequential = sample(backbone, inversion, clip.first_frame, edited, settings, sequential_calls,
                            probe=recording_probe(sequential_features), memory=plan)
    finally:
        for hook in hooks:
            hook.remove()
    # The injection sites slice too, in every call, during and after the injected steps: 13 calls x 8 slices.
    assert slices == {"spatial.9": 13 * 8, "temporal.9": 13 * 8}
    # 1e-5 relative to the latents' scale: batch-1 and batch-3 matmuls round differently and guidance 9
    # amplifies that float32 noise (the 64-frame mid-size bench run agreed to 4.5e-7).
    torch.testing.assert_close(sequential, batched, atol=1e-5 * float(batched.abs().max()), rtol=1e-5)
    # Largest batch 1: source + 2 edit branches for the 3 injected steps, 2 edit branches after.
    assert batched_calls == Counter({3: 3, 2: 2}) and sequential_calls == Counter({1: 3 * 3 + 2 * 2})

    assert sequential_features.keys() == batched_features.keys()
    sites = injection_sites(backbone.unet)
    for site in sites:
        for step in range(STEPS):
            names = ("source", "uncond", "cond") if step < 3 else ("uncond", "cond")
            for name in names:
                # Batch 1 and batch 3 matmuls round differently: the features agree to float32 noise.
                for ours, theirs in zip(sequential_features[(site.name, step, name)], batched_features[(site.name, step, name)]):
                    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
            if step >= 3:
                continue
            # The edit branches' Q/K (conv feature) are the source's exactly at injected steps, and only there.
            source = sequential_features[(site.name, step, "source")]
            for name in ("uncond", "cond"):
                edit = sequential_features[(site.name, step, name)]
                equal = all(torch.equal(a, b) for a, b in zip(source, edit))
                assert equal == (step < injected_steps[site.kind]), (site.name, step, name)


def test_sequential_branches_without_guidance_and_with_a_start_index(backbone, kitten):
    config, clip, edited, inversion = kitten
    settings = dataclasses.replace(SamplingSettings.from_config(config, "a dog"), guidance=1.0, start_index=1, tau_ta=0.6)
    calls = Counter()
    batched = sample(backbone, inversion, clip.first_frame, edited, settings)
    sequential = sample(backbone, inversion, clip.first_frame, edited, settings, calls, memory=MemoryPlan.on())
    torch.testing.assert_close(sequential, batched, atol=1e-5, rtol=1e-5)
    assert calls == Counter({1: 2 * 2 + 2})  # steps 1, 2 with the source, 3, 4 without


# ---- chunked feed-forward, sliced attention and VAE chunks give the plain output ---------------------------------


def unet_step(backbone, kitten):
    """One UNet forward of the kitten edit at t = 801 (a function, so a test can run it under plug-ins)."""
    config, clip, edited, inversion = kitten
    latents, text = inversion.at(801), backbone.encode_prompt(["a dog"])
    image, image_latents = backbone.encode_image(edited), backbone.first_frame_latents(edited, FRAMES, 0)
    return lambda: backbone.unet_forward(latents, 801, text, image, image_latents, 8)


def test_chunked_feed_forward_equals_plain_and_really_chunks(backbone, kitten):
    unet, forward = backbone.unet, unet_step(backbone, kitten)
    ff_calls = Counter()
    handles = [m.ff.register_forward_hook(lambda *_, n=name: ff_calls.update([n]))
               for name, m in unet.named_modules() if hasattr(m, "set_chunk_feed_forward")]
    try:
        with torch.no_grad():
            plain = forward()
            plain_calls = sum(ff_calls.values())
            with chunked_feed_forward(unet, max_tokens=16):  # spatial (8, 64) -> 1 frame; temporal (64, 8) -> 2 rows
                chunked = forward()
            chunked_calls = sum(ff_calls.values()) - plain_calls
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    assert chunked_calls > 4 * plain_calls
    assert all(getattr(m, "_chunk_size", None) is None for m in unet.modules() if hasattr(m, "set_chunk_feed_forward"))
    assert not any(m._forward_pre_hooks for m in unet.modules())
    assert feed_forward_chunk(torch.Size([8, 64, 32]), 16) == 1 and feed_forward_chunk(torch.Size([64, 8, 32]), 16) == 2
    assert feed_forward_chunk(torch.Size([64, 8, 32]), 10**6) is None


def test_sliced_attention_equals_plain_and_really_slices(backbone, kitten):
    unet, forward = backbone.unet, unet_step(backbone, kitten)
    calls: Counter = Counter()  # to_v calls per attention
    rows: Counter = Counter()  # rows they saw

    def count(name):
        def hook(module, args, output):
            calls.update([name])
            rows.update({name: args[0].shape[0]})

        return hook

    handles = [m.to_v.register_forward_hook(count(name)) for name, m in unet.named_modules() if hasattr(m, "set_processor")]
    processors = unet.attn_processors
    try:
        with torch.no_grad():
            plain = forward()
            plain_calls, plain_rows = Counter(calls), Counter(rows)
            calls.clear(), rows.clear()
            with sliced_attention(unet, max_tokens=16):  # spatial (8, 64): 1 frame a slice; temporal (64, 8): 2 rows
                sliced = forward()
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=1e-5)
    # Every attention saw all its rows, in slices.
    assert set(plain_calls.values()) == {1} and rows == plain_rows and calls.keys() == plain_calls.keys()
    assert calls["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == FRAMES
    assert calls["down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1"] == (SIZE // 8) ** 2 // 2
    # The processors in place before are back.
    assert all(unet.attn_processors[name] is processor for name, processor in processors.items())
    assert slice_rows(8, 64, 16) == 1 and slice_rows(64, 8, 16) == 2 and slice_rows(64, 8, 10**6) is None
    assert slice_rows(6, 8, 32) == 3  # a divisor of the rows: slices of equal size


def _random_attention(**config):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(**config).eval()
    with torch.no_grad():
        for parameter in attn.parameters():
            parameter.normal_(0, 0.3)
    attn.set_processor(AttnProcessor2_0())
    return attn


def test_attention_is_diffusers_attnprocessor2_0_whole_and_sliced():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from anyv2v.attention import attention

    torch.manual_seed(0)
    rows, length, width = 6, 8, 16
    hidden = torch.randn(rows, length, width)
    text = torch.randn(rows, 5, 12)
    base = dict(query_dim=width, heads=2, dim_head=8)
    cross = dict(base, cross_attention_dim=12)
    cases = [
        ("self", _random_attention(**base), hidden, None, None, None),
        ("cross", _random_attention(**cross), hidden, text, None, None),
        ("residual, rescale", _random_attention(**base, residual_connection=True, rescale_output_factor=2.0), hidden, None, None, None),
        ("group norm", _random_attention(**base, norm_num_groups=4), hidden, None, None, None),
        ("cross norm", _random_attention(**cross, cross_attention_norm="layer_norm"), hidden, text, None, None),
        ("qk norm", _random_attention(**base, qk_norm="layer_norm"), hidden, None, None, None),
        ("4-D input", _random_attention(**base, norm_num_groups=4, residual_connection=True), torch.randn(3, width, 4, 4), None, None, None),
        ("spatial norm", _random_attention(query_dim=32, heads=2, dim_head=16, spatial_norm_dim=4), torch.randn(2, 32, 4, 4), None, None, torch.randn(2, 4, 2, 2)),
        ("mask per row", _random_attention(**base), hidden, None, torch.randn(rows, 1, length), None),
        ("mask per head", _random_attention(**base), hidden, None, torch.randn(rows * 2, length, length), None),
        ("bool mask", _random_attention(**base), hidden, None, torch.rand(rows, 1, length) > 0.3, None),
        ("cross mask", _random_attention(**cross), hidden, text, torch.randn(rows, 1, 5), None),
    ]
    with torch.no_grad():
        for name, attn, inputs, context, mask, temb in cases:
            reference = AttnProcessor2_0()(attn, inputs, context, mask, temb)
            assert torch.equal(attention(attn, inputs, context, mask, temb), reference), name
            for tokens in (1, 7, 16):  # 1 row a slice, 1 row (a row is longer), 2 rows
                sliced = attention(attn, inputs, context, mask, temb, max_tokens=tokens)
                torch.testing.assert_close(sliced, reference, atol=1e-5, rtol=1e-5, msg=f"{name}, {tokens} tokens")
        # A context whose rows do not pair with the input's is refused, not mixed across rows.
        with pytest.raises(ValueError, match="1 rows for 6 input rows"):
            attention(cases[1][1], hidden, torch.randn(1, 5, 12))


def test_vae_in_frame_chunks_equals_plain(backbone, kitten):
    config, clip, edited, inversion = kitten
    frames = clip.frames
    plain = backbone.encode_frames(frames, torch.Generator().manual_seed(1))
    chunked = backbone.encode_frames(frames, torch.Generator().manual_seed(1), compute_chunk=1)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
    decoded_plain = backbone.decode(plain, chunk=4)
    reports = []
    decoded_chunked = backbone.decode(plain, chunk=1, progress=lambda *r: reports.append(r))
    import numpy as np

    # Same frames up to float32 rounding (a value on a .5 boundary may land one uint8 level apart).
    assert max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() for a, b in zip(decoded_plain, decoded_chunked)) <= 1
    assert reports == [("decode", i, FRAMES) for i in range(1, FRAMES + 1)]


# ---- the automatic choice ---------------------------------------------------------------------------------


def test_memory_auto_turns_the_options_on_only_when_needed():
    from anyv2v.tiny import I2VGEN_XL_UNET, I2VGEN_XL_VAE

    common = dict(unet_config=I2VGEN_XL_UNET, vae_config=I2VGEN_XL_VAE, height=512, width=512,
                  dtype=torch.float16, device=torch.device("cuda"))
    gib = 2**30
    roomy = plan_memory("auto", frames=16, free_bytes=40 * gib, **common)
    assert not roomy.any and "plain path" in roomy.reason
    tight = plan_memory("auto", frames=128, free_bytes=20 * gib, **common)
    assert tight.sequential_branches and tight.chunk_feed_forward and tight.vae_frames == 1
    # The model predicts about 0.4 of the plain activations (the CPU bench measured 0.38 at 128x128 and 0.30 at
    # 256x256 beyond the fixed process: README "Long clips and bounded memory").
    assert tight.estimate["bounded_bytes"] < 0.45 * tight.estimate["plain_bytes"]
    assert not plan_memory("off", frames=128, free_bytes=1, **common).any
    assert plan_memory("on", frames=2, free_bytes=100 * gib, **common).any
    # The estimate grows linearly with the frame count.
    sizes = [plan_memory("off", frames=n, free_bytes=0, **common).estimate["plain_bytes"] for n in (32, 64)]
    assert 1.9 < sizes[1] / sizes[0] < 2.1
    with pytest.raises(Exception, match="memory"):
        EditConfig(memory="sometimes").validate()


# ---- a 64-frame edit of a real clip, end to end -----------------------------------------------------------


def test_64_frame_edit_of_a_looped_demo_clip(tiny_model, demo, tmp_path):
    from anyv2v.bench import predicted_unet_calls
    from anyv2v.video import read_video, write_video

    source = read_video(demo / "kitten.mp4", frames=0, fps=8)
    looped = write_video(list(source.frames) * 4, tmp_path / "kitten_x4.mp4", 8)  # 64 real frames, 8 s
    config = small_config(tiny_model, tmp_path / "cache", frames=0, steps=2, inversion_steps=2, memory="on")
    reports = []
    result = run_edit(looped, demo / "edited" / "kitten__dog.png", "a dog", config, tmp_path / "dog.mp4",
                      progress=lambda *r: reports.append(r))
    assert result.frames == 64
    with av.open(str(result.video_path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 64
    record = json.loads(result.json_path.read_text())
    assert record["frames"] == 64
    assert record["memory"]["mode"] == "on" and record["memory"]["sequential_branches"] is True
    assert record["unet_calls"] == predicted_unet_calls(config, sequential=True)
    assert record["unet_calls"] == {"inversion": 2, "sampling": {"1": 3 + 2}}  # tau_ta 0.5 of 2 steps: 1 with the source
    assert ("decode", 64, 64) in reports and ("sampling", 2, 2) in reports and ("encode", 64, 64) in reports


# ---- the inversion cache keeps what sampling reads and checks it on load ----------------------------------------


def test_cache_keeps_the_sampling_timesteps_and_serves_coarser_schedules(tiny_model, backbone, demo, tmp_path):
    config = small_config(tiny_model, tmp_path / "cache", frames=4, steps=2, inversion_steps=4)
    clip = prepare_clip(demo / "kitten.mp4", config)
    cache = InversionCache(config.cache_dir, 2**30)
    inversion, hit = get_inversion(backbone, clip, config, cache, Counter())
    assert not hit and inversion.timesteps == sorted(sampling_timesteps(backbone.scheduler_config, 2)) == [1, 501]
    (entry,) = cache.entries()
    latent = 4 * 4 * 8 * 8 * 4  # C x F x h x w x fp32 bytes
    assert 2 * latent <= entry[1] < 2 * latent + 4096  # 2 latents stored, not 4
    # 1 step reads a subset: a hit. 4 steps need more: a miss, and the new entry serves both.
    assert get_inversion(backbone, clip, config.replace(steps=1), cache, Counter())[1]
    calls = Counter()
    inversion, hit = get_inversion(backbone, clip, config.replace(steps=4), cache, calls)
    assert not hit and sum(calls.values()) == 4 and inversion.timesteps == [1, 251, 501, 751]
    assert get_inversion(backbone, clip, config, cache, Counter())[1] and len(cache.entries()) == 1


def test_bad_cache_entries_are_a_miss_and_get_replaced(tiny_model, backbone, demo, tmp_path):
    config = small_config(tiny_model, tmp_path / "cache", frames=4, steps=2, inversion_steps=2)
    clip = prepare_clip(demo / "kitten.mp4", config)
    cache = InversionCache(config.cache_dir, 2**30)
    good, _ = get_inversion(backbone, clip, config, cache, Counter())
    (path, _, _), = cache.entries()
    shape = tuple(good.at(1).shape)

    def entry_now():
        return cache.get(good.key, timesteps=good.timesteps, shape=shape, dtype=backbone.dtype)

    bad_entries = {
        "wrong shape": {t: torch.zeros(1, 4, 3, 8, 8) for t in good.timesteps},
        "wrong dtype": {t: v.to(torch.float16) for t, v in good.latents.items()},
        "missing timesteps": {t: v for t, v in good.latents.items() if t != 1},
    }
    for problem, latents in bad_entries.items():
        cache.put(Inversion(latents, good.key))
        assert entry_now() is None, problem
        calls = Counter()
        inversion, hit = get_inversion(backbone, clip, config, cache, calls)
        assert not hit and sum(calls.values()) == 2, problem
        torch.testing.assert_close(inversion.at(1), good.at(1))
        assert entry_now() is not None, problem  # replaced by a good entry
    path.write_bytes(b"not a safetensors file")
    assert entry_now() is None and not path.exists()  # unreadable: deleted
    assert not get_inversion(backbone, clip, config, cache, Counter())[1]
    assert entry_now() is not None


# ---- bench sweep and time estimate ------------------------------------------------------------------------------


def test_bench_frames_sweep_prints_one_line_per_count_with_the_reference_ratio(tiny_model, demo, capsys):
    from anyv2v.cli import main

    argv = ["bench", "--video", str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
            "--model", str(tiny_model), "--size", "64x64", "--steps", "2", "--inversion-steps", "2",
            "--frames-sweep", "4,8"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["frames"] for line in lines] == [4, 8]
    for line in lines:
        assert set(line["seconds"]) >= {"load", "inversion", "sampling", "decode"}
        assert line["peak_memory"]["bytes"] > 0 and line["memory"]["mode"] == "auto"
        assert line["unet_calls"] == {"inversion": 2, "sampling": {"3": 1, "2": 1}}
        assert line["reference_unet_calls"] == {"inversion": 2, "sampling": {"3": 2}}
        assert line["flops_ratio_vs_reference"] == round((2 + 3 + 2) / (2 + 3 * 2), 4)
    assert 1.8 < lines[1]["unet_flops_per_call_batch1"] / lines[0]["unet_flops_per_call_batch1"] < 2.2


def test_estimate_seconds_from_flops_and_throughput(tiny_model):
    from anyv2v.bench import estimate_seconds

    config = EditConfig(model=str(tiny_model), width=64, height=64, frames=16, steps=10, inversion_steps=10)
    estimate = estimate_seconds(config, "cpu", throughput=1e9)
    assert estimate["unet_calls"] == {"inversion": 10, "sampling": {"3": 5, "2": 5}}
    assert math.isclose(estimate["seconds"], round(estimate["flops"]["total"] / (1e9 * estimate["unet_efficiency"]), 1))
    cached = estimate_seconds(config, "cpu", cached_inversion=True, throughput=1e9)
    assert cached["seconds"] < estimate["seconds"] and cached["unet_calls"]["inversion"] == 0
    longer = estimate_seconds(config.replace(frames=0), "cpu", frames=32, throughput=1e9)
    assert 1.8 < longer["seconds"] / estimate["seconds"] < 2.2
    assert estimate_seconds(config, "cpu")["device_flops_per_second"] > 0
