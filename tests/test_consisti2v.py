"""The ConsistI2V backbone: its UNet's own parts, first-frame handling, injection at exactly the scheduled steps
and sites (over the full grid, cut by the start index), UNet calls, the cache, the source-branch setting, the
converter and its refusals, bad inputs, the CLI and bench.

Parity of the whole edit with the official code is checked with ../shared/tools/parity (tools/parity_run.py,
README "ConsistI2V"); these tests run offline on a tiny random ConsistI2V in the hub's layout."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import subprocess
import sys
from collections import Counter, defaultdict

import pytest
import torch

from anyv2v.backbones.consisti2v.unet import RotaryEmbedding
from anyv2v.config import EditConfig
from anyv2v.errors import ConfigError, ModelLoadError
from anyv2v.sampler import SamplingSettings, sample

from .conftest import REPO

FRAMES, SIZE, STEPS, INVERSION, START = 4, 64, 10, 20, 1


@pytest.fixture(scope="session")
def tiny_ci2v(tmp_path_factory):
    from anyv2v.backbones.consisti2v.tiny import make_tiny_consisti2v

    return make_tiny_consisti2v(tmp_path_factory.mktemp("models") / "tiny-consisti2v")


@pytest.fixture(scope="module")
def ci2v(tiny_ci2v):
    from anyv2v.pipeline import BACKBONES

    torch.set_num_threads(1)
    return BACKBONES.get(str(tiny_ci2v), backbone="consisti2v")


def ci2v_config(model, cache_dir, **changes) -> EditConfig:
    settings = dict(
        model=str(model), width=SIZE, height=SIZE, frames=FRAMES, steps=STEPS, inversion_steps=INVERSION,
        start_index=START, cache_dir=str(cache_dir),
    )
    return EditConfig.for_backbone("consisti2v", **{**settings, **changes}).validate()


@pytest.fixture(scope="module")
def inverted(ci2v, tiny_ci2v, demo, tmp_path_factory):
    from anyv2v.cache import InversionCache
    from anyv2v.pipeline import get_inversion, prepare_clip, prepare_edit_image

    config = ci2v_config(tiny_ci2v, tmp_path_factory.mktemp("cache"))
    clip = prepare_clip(demo / "kitten.mp4", config)
    edited, _ = prepare_edit_image(demo / "edited" / "kitten__dog.png", clip, config)
    inversion, _ = get_inversion(ci2v, clip, config, InversionCache(config.cache_dir, 2**30), Counter())
    return config, clip, edited, inversion


# ---- the model's own parts ---------------------------------------------------------------------------------


def test_rotary_rotates_interleaved_pairs_of_the_first_half_of_the_inner_dim():
    rotary = RotaryEmbedding(16)  # inner dim 32: the first 16 channels rotate, before any head split
    x = torch.randn(3, 5, 32)
    positions = torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0])
    y = rotary.rotate(x, positions)
    assert torch.equal(y[..., 16:], x[..., 16:])
    for row, p in enumerate(positions.tolist()):
        for pair in (0, 3, 7):
            angle = p * 10000 ** (-2 * pair / 16)
            a, b = x[:, row, 2 * pair], x[:, row, 2 * pair + 1]
            torch.testing.assert_close(y[:, row, 2 * pair], a * math.cos(angle) - b * math.sin(angle))
            torch.testing.assert_close(y[:, row, 2 * pair + 1], b * math.cos(angle) + a * math.sin(angle))
    torch.testing.assert_close(y[:, 3], x[:, 3])  # position 0 (a first-frame neighbour key) is not rotated


def test_unet_denoises_frames_after_the_first_conditioned_on_it(ci2v):
    unet = ci2v.unet
    x, first = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 1, 8, 8)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        out = unet(x, torch.tensor(501), text, first, 3)
        changed = torch.cat([torch.randn(1, 4, 3, 8, 8), x[1:]])  # item 0 changed, item 1 as before
        mixed = unet(changed, torch.tensor(501), text, torch.cat([-first[:1], first[1:]]), 3)
        other_first = unet(x, torch.tensor(501), text, first.flip(-1), 3)
        other_stride = unet(x, torch.tensor(501), text, first, 5)
    assert out.shape == (2, 4, 3, 8, 8)
    # Batch items do not mix (the branches of a sampling call share a batch). Compared within one batch size:
    # across batch sizes the 1x1 bottom level's GroupNorms (2 values a group) magnify fp32 rounding to 1e-4.
    torch.testing.assert_close(mixed[1:], out[1:], rtol=1e-5, atol=1e-5)
    assert (mixed[:1] - out[:1]).abs().max() > 1e-3
    assert (other_first - out).abs().max() > 1e-3  # the first frame conditions every frame
    assert (other_stride - out).abs().max() > 1e-4  # the frame stride is an input
    # The official state-dict names: the hub folder's unet/ loads strictly (done by the loader) and holds these.
    names = set(unet.state_dict())
    assert "up_blocks.1.tempo_attns.1.transformer_blocks.0.attn1.rotary_emb.freqs" in names
    assert "down_blocks.0.conv3ds.0.alpha" in names and "frame_stride_embedding.linear_2.weight" in names


def test_injection_sites_are_the_official_ones(ci2v):
    sites = ci2v.injection_sites()
    assert [s.module_path for s in sites if s.kind == "conv"] == ["up_blocks.1.resnets.1.conv2"]
    spatial = [s.module_path for s in sites if s.kind == "spatial"]
    temporal = [s.module_path for s in sites if s.kind == "temporal"]
    assert spatial[0] == "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert spatial[-1] == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    assert temporal == [p.replace("attentions", "tempo_attns") for p in spatial] and len(temporal) == 8


# ---- first frame, injection, calls -------------------------------------------------------------------------


def test_inverted_latents_keep_the_clean_first_frame_and_the_edit_starts_on_the_edited_one(ci2v, inverted):
    config, clip, edited, inversion = inverted
    first = ci2v.first_frame_latent(clip.first_frame, config.seed)
    for t in inversion.timesteps:
        assert torch.equal(inversion.at(t)[:, :, :1], first)  # frame 0 of every inverted latent
    assert inversion.timesteps == sorted({901, 801, 701, 601, 501, 401, 301, 201, 101, 1})
    out = sample(ci2v, inversion, clip.first_frame, edited, SamplingSettings.from_config(config, "a dog"))
    assert torch.equal(out[:, :, :1], ci2v.first_frame_latent(edited, config.seed))  # decoded with the others


@pytest.mark.parametrize("guidance, branches", [(35.0, 3), (1.0, 2)])
def test_edit_qk_and_conv_equal_source_exactly_at_injected_steps(ci2v, inverted, guidance, branches):
    config, clip, edited, inversion = inverted
    # k = int(10 * tau) over the full grid; the start index (1) skips step 0, so conv injects at steps 1, 2.
    k = {"conv": 3, "spatial": 2, "temporal": 5}
    injected, seen = Counter(), defaultdict(set)

    def probe(site, state, query, key):
        seen[site.name].add(state.step_index)
        if not state.has_source:
            return
        order = ("source", "uncond", "cond") if branches == 3 else ("source", "cond")
        assert state.names == order  # ConsistI2V's batch: [source | uncond | cond]
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
    sample(ci2v, inversion, clip.first_frame, edited, settings, calls, probe=probe)
    sites = ci2v.injection_sites()
    assert len(sites) == 17 and set(seen) == {s.name for s in sites}
    for site in sites:
        assert injected[site.name] == k[site.kind] - START, site.name
        assert seen[site.name] == set(range(START, STEPS))
    assert calls == Counter({branches: 4, branches - 1: 5})  # the source branch leaves after the last injection


def test_source_branch_frame_default_is_the_official_edited_one(ci2v, inverted):
    config, clip, edited, inversion = inverted
    assert config.source_branch_frame == "edited" and EditConfig().source_branch_frame == "source"
    seen = {}

    def record(self, source_frame, edited_frame, *args):
        seen["same"] = source_frame is edited_frame
        return original(source_frame, edited_frame, *args)

    original = ci2v.sampling_conditions
    settings = dataclasses.replace(SamplingSettings.from_config(config, "a dog"), tau_conv=1.0, tau_sa=1.0, tau_ta=1.0)
    ci2v.sampling_conditions = record.__get__(ci2v)
    try:
        official = sample(ci2v, inversion, clip.first_frame, edited, settings)
        assert seen["same"]
        described = sample(ci2v, inversion, clip.first_frame, edited, dataclasses.replace(settings, source_branch_frame="source"))
        assert not seen["same"]
    finally:
        del ci2v.sampling_conditions
    assert (official - described).abs().max() > 1e-4  # it changes the source features the edit takes
    with pytest.raises(ConfigError, match="source_branch_frame='both' is not one of source, edited"):
        config.replace(source_branch_frame="both").validate()


def test_frame_init_equals_the_official_code_on_recorded_tensors():
    """FrameInit on a start latent and a first-frame latent, against the official code's output recorded in
    tests/fixtures (frameinit_utils' Gaussian filter and freq_mix_3d after diffusers' add_noise to t = 850)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from anyv2v.backbones.consisti2v.frame_init import DEFAULT_NOISE_LEVEL, frame_init
    from anyv2v.schedule import make_scheduler

    path = REPO / "tests" / "fixtures" / "frame_init_reference.safetensors"
    recorded = load_file(path)
    with safe_open(path, "pt") as handle:
        assert int(handle.metadata()["noise_level"]) == DEFAULT_NOISE_LEVEL
    config = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
              "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1,
              "prediction_type": "epsilon", "timestep_spacing": "leading"}
    alphas_cumprod = make_scheduler(config, inverse=False).alphas_cumprod
    ours = frame_init(recorded["start"], recorded["first_frame"], alphas_cumprod, DEFAULT_NOISE_LEVEL)
    assert float((ours - recorded["reference_out"]).abs().max()) <= 1e-6
    assert float((ours - recorded["start"]).abs().max()) > 0.01  # it does change the start latent (0.047 here)


def test_frame_init_is_an_option_of_consisti2v_only(ci2v, inverted):
    """Off by default (as the official editing scripts); on, it changes the edit but not the UNet calls;
    other backbones and bad noise levels are refused with the setting's name."""
    config, clip, edited, inversion = inverted
    assert not config.frame_init and not EditConfig().frame_init and config.frame_init_noise_level == 850
    settings = SamplingSettings.from_config(config, "a dog")
    plain_calls, init_calls = Counter(), Counter()
    plain = sample(ci2v, inversion, clip.first_frame, edited, settings, plain_calls)
    with_init = sample(ci2v, inversion, clip.first_frame, edited, dataclasses.replace(settings, frame_init=True), init_calls)
    assert plain_calls == init_calls and torch.isfinite(with_init).all()
    assert (with_init - plain).abs().max() > 1e-3
    assert torch.equal(with_init[:, :, :1], plain[:, :, :1])  # frame 0 stays the edited first frame's latent
    with pytest.raises(ConfigError, match="frame_init is ConsistI2V's FrameInit; i2vgen-xl has none"):
        EditConfig(frame_init=True).validate()
    with pytest.raises(ConfigError, match="frame_init_noise_level"):
        config.replace(frame_init=True, frame_init_noise_level=1000).validate()


def test_sliced_attention_equals_plain_and_really_slices(ci2v):
    """The bounded-memory option on ConsistI2V's UNet: the same output, with the temporal attention (frames plus
    first-frame neighbours per pixel) and the spatial one computed a slice of rows at a time."""
    from anyv2v.memory import sliced_attention

    unet = ci2v.unet
    x, text, first = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 77, 32), torch.randn(1, 4, 1, 8, 8)
    rows = Counter()
    handles = [m.to_v.register_forward_hook(lambda mod, args, out, n=name: rows.update([n]))
               for name, m in unet.named_modules() if hasattr(m, "set_processor")]
    try:
        with torch.no_grad():
            plain = unet(x, torch.tensor(300), text, first, 3)
            plain_rows = Counter(rows)
            rows.clear()
            with sliced_attention(unet, max_tokens=16):
                cut = unet(x, torch.tensor(300), text, first, 3)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(cut, plain, rtol=1e-5, atol=1e-5)
    temporal = "down_blocks.0.tempo_attns.0.transformer_blocks.0.attn1"
    spatial = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert plain_rows[temporal] == 1 and rows[temporal] == 16  # 64 pixels, 4 a slice
    assert plain_rows[spatial] == 1 and rows[spatial] == 4  # 4 frames (the first prepended), one a slice


def test_sequential_branches_equal_batched(ci2v, tiny_ci2v, demo, tmp_path):
    """Batch-1 calls (the source's features captured: spatial keys from [frame | first frame], temporal keys from
    [frames | first-frame neighbours]) equal the batched call. At 128x128: at 64x64 the tiny UNet's 1x1 bottom level
    (GroupNorms of 2 values) turns fp32 rounding between batch sizes into 2 % differences, injection or not."""
    from anyv2v.cache import InversionCache
    from anyv2v.memory import MemoryPlan
    from anyv2v.pipeline import get_inversion, prepare_clip, prepare_edit_image

    config = ci2v_config(tiny_ci2v, tmp_path / "cache", width=128, height=128)
    clip = prepare_clip(demo / "kitten.mp4", config)
    edited, _ = prepare_edit_image(demo / "edited" / "kitten__dog.png", clip, config)
    inversion, _ = get_inversion(ci2v, clip, config, InversionCache(config.cache_dir, 2**30), Counter())
    settings = dataclasses.replace(SamplingSettings.from_config(config, "a dog"), tau_conv=1.0, tau_sa=1.0, tau_ta=1.0)
    batched = sample(ci2v, inversion, clip.first_frame, edited, settings)
    calls = Counter()
    sequential = sample(ci2v, inversion, clip.first_frame, edited, settings, calls, memory=MemoryPlan.on())
    scale = float(batched.abs().max())
    assert float((sequential - batched).abs().max()) <= 1e-4 + 1e-4 * scale, scale
    assert calls == Counter({1: 3 * (STEPS - START)})


def test_edit_counts_calls_reuses_its_cache_and_keys_it_by_backbone(tiny_ci2v, tiny_model, demo, tmp_path):
    from anyv2v.pipeline import run_edit

    cache = tmp_path / "cache"
    config = ci2v_config(tiny_ci2v, cache)
    video, frame = demo / "kitten.mp4", demo / "edited" / "kitten__dog.png"
    first = run_edit(video, frame, "a dog", config, tmp_path / "1.mp4")
    assert not first.inversion_from_cache
    assert first.unet_calls == {"inversion": INVERSION, "sampling": {"3": 4, "2": 5}}  # tau_ta 0.5 of 10, from 1
    record = json.loads(first.json_path.read_text())
    assert record["settings"]["backbone"] == "consisti2v" and record["settings"]["guidance"] == 35.0
    assert record["settings"]["source_branch_frame"] == "edited"
    second = run_edit(video, frame, "a cat", config.replace(tau_ta=1.0), tmp_path / "2.mp4")
    assert second.inversion_from_cache and second.unet_calls == {"inversion": 0, "sampling": {"3": STEPS - START}}
    other = config.replace(backbone="i2vgen-xl", model=str(tiny_model), guidance=9.0, source_branch_frame="source")
    third = run_edit(video, frame, "a dog", other, tmp_path / "3.mp4")
    assert not third.inversion_from_cache and len(list(cache.glob("*.safetensors"))) == 2


def test_cli_make_tiny_model_and_bench_with_the_reference_calls(tmp_path, demo, capsys):
    """The CLI's commands in this process (`python -m anyv2v` runs the same `main`; the process boundary is
    tested in test_engine and test_reliability)."""
    from anyv2v.cli import main

    model = tmp_path / "ci2v"
    assert main(["make-tiny-model", "--backbone", "consisti2v", str(model)]) == 0
    index = json.loads((model / "model_index.json").read_text())
    assert index["unet"] == ["consisti2v.models.videoldm_unet", "VideoLDMUNet3DConditionModel"]
    capsys.readouterr()
    args = [
        "bench", "--backbone", "consisti2v", "--model", str(model), "--video",
        str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"), "--size", "64x64",
        "--frames", "4", "--steps", "10", "--inversion-steps", "20", "--start-index", "1",
    ]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["backbone"] == "consisti2v" and report["unet_calls"] == {"inversion": 20, "sampling": {"3": 4, "2": 5}}
    # The official scripts: 20 inversion + a 10-step reconstruction at batch 1, the 9 edit steps at batch 3.
    assert report["reference_unet_calls"] == {"inversion": 30, "sampling": {"3": 9}}


def test_yaml_backbone_gets_its_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backbone: consisti2v\nsteps: 25\n")
    config = EditConfig.load_yaml(path)
    assert (config.width, config.height, config.guidance, config.start_index, config.steps) == (256, 256, 35.0, 4, 25)
    assert config.source_branch_frame == "edited" and config.resolved_model() == "TIGER-Lab/ConsistI2V"
    path.write_text("backbone: consisti2v\nframe_init: true\nframe_init_noise_level: 700\n")
    config = EditConfig.load_yaml(path)
    assert config.frame_init and config.frame_init_noise_level == 700


def test_cli_frame_init_flags(tmp_path):
    from anyv2v.cli import build_parser, config_from_args

    base = ["edit", "--video", "v.mp4", "--edited-frame", "f.png", "--prompt", "p", "--backbone", "consisti2v"]
    config = config_from_args(build_parser().parse_args([*base, "--frame-init", "--frame-init-noise-level", "700"]))
    assert config.frame_init and config.frame_init_noise_level == 700
    assert not config_from_args(build_parser().parse_args(base)).frame_init
    path = tmp_path / "c.yaml"
    path.write_text("frame_init: true\n")
    assert config_from_args(build_parser().parse_args([*base, "--config", str(path)])).frame_init
    assert not config_from_args(build_parser().parse_args([*base, "--config", str(path), "--no-frame-init"])).frame_init
    with pytest.raises(ConfigError, match="seine has none"):
        config_from_args(build_parser().parse_args([*base[:-1], "seine", "--frame-init"]))


# ---- the converter ----------------------------------------------------------------------------------------------


def _pickled_copy(tiny, root):
    """The tiny folder with its UNet weights as a .bin pickle (as a folder of pickles would come)."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(tiny, root)
    state = load_file(str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    (root / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, root / "unet" / "diffusion_pytorch_model.bin")
    return state


def test_converter_writes_safetensors_that_load_the_same_weights(tiny_ci2v, tmp_path):
    from anyv2v.backbones.consisti2v import load_consisti2v
    from anyv2v.backbones.consisti2v.convert import convert_consisti2v

    state = _pickled_copy(tiny_ci2v, tmp_path / "bin")
    with pytest.raises(ModelLoadError, match="holds .bin pickles only; convert the folder once"):
        load_consisti2v(str(tmp_path / "bin"), "cpu", "float32")
    out = convert_consisti2v(tmp_path / "bin", tmp_path / "out")
    loaded = load_consisti2v(str(out), "cpu", "float32")
    for name, tensor in state.items():
        assert torch.equal(loaded.unet.state_dict()[name], tensor), name


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_converter_refuses_a_code_running_pickle_and_runs_nothing(tiny_ci2v, tmp_path):
    from anyv2v.backbones.consisti2v.convert import convert_consisti2v

    _pickled_copy(tiny_ci2v, tmp_path / "bin")
    marker = tmp_path / "pwned"
    with open(tmp_path / "bin" / "unet" / "diffusion_pytorch_model.bin", "wb") as handle:
        pickle.dump({"conv_in.weight": torch.zeros(1), "hook": _RunsCode(marker)}, handle)
    with pytest.raises(ModelLoadError) as info:
        convert_consisti2v(tmp_path / "bin", tmp_path / "out")
    assert "refused" in str(info.value) and "nothing from it was run" in str(info.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- bad inputs: one line naming what to do ---------------------------------------------------------------------


def _cli(argv, cwd):
    done = subprocess.run([sys.executable, "-m", "anyv2v", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()]


def _edit_args(demo, tmp_path, *extra):
    return ["edit", "--video", str(demo / "kitten.mp4"), "--edited-frame", str(demo / "edited" / "kitten__dog.png"),
            "--prompt", "a dog", "--size", "64x64", "--frames", "4", "--steps", "10", "--inversion-steps", "20",
            "--out", str(tmp_path / "o.mp4"), "--cache-dir", str(tmp_path / "cache"), *extra]


@pytest.mark.parametrize("case", ["ci2v-as-i2vgen", "i2vgen-as-ci2v", "hub-offline", "missing-unet", "bad-unet-option"])
def test_bad_inputs_give_one_line(case, tiny_ci2v, tiny_model, demo, tmp_path):
    import shutil

    if case == "ci2v-as-i2vgen":
        extra, words = ["--model", str(tiny_ci2v)], "holds a consisti2v model, not i2vgen-xl; pass --backbone consisti2v"
    elif case == "i2vgen-as-ci2v":
        extra, words = ["--backbone", "consisti2v", "--model", str(tiny_model)], "holds a i2vgen-xl model, not consisti2v"
    elif case == "hub-offline":
        extra, words = ["--backbone", "consisti2v"], "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    elif case == "missing-unet":
        broken = tmp_path / "broken"
        shutil.copytree(tiny_ci2v, broken)
        shutil.rmtree(broken / "unet")
        extra, words = ["--backbone", "consisti2v", "--model", str(broken)], "has no unet/"
    else:
        broken = tmp_path / "broken"
        shutil.copytree(tiny_ci2v, broken)
        config = json.loads((broken / "unet" / "config.json").read_text())
        config["first_frame_condition_mode"] = "conv2d"
        (broken / "unet" / "config.json").write_text(json.dumps(config))
        extra, words = ["--backbone", "consisti2v", "--model", str(broken)], "first_frame_condition_mode='conv2d' is not supported"
    code, lines = _cli(_edit_args(demo, tmp_path, *extra), REPO)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "o.mp4").exists()
