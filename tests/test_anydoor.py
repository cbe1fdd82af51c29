"""The AnyDoor subject editor: the converter on a tiny checkpoint in the official LDM key layout (checked against a
direct computation of the layers it maps), the preprocessing on a real demo frame and reference, rembg offline on a
tiny ONNX model, and the editor end to end from the CLI and through the app's API, then a video edit."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw

from anyv2v.errors import AnyV2VError
from editors import available_editors, get_editor
from editors.base import MODEL_CACHE, EditorError
from editors.frames import first_frame

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "demo"
KITTEN = DEMO / "kitten.mp4"
DOG = DEMO / "edited" / "kitten__dog.png"
KITTEN_BOX = (170, 40, 470, 430)  # x0, y0, x1, y1: the kitten in the 512x512 first frame
SMALL = 64
SMALL_BOX = "16,16,40,44"

# ---- a tiny checkpoint in the official layout ---------------------------------------------------------------

# configs/anydoor.yaml's layout with tiny numbers: 32 channels, one level with attention, one without.
TINY_UNET = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [1],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 32,
    "legacy": False,
}
TINY_LDM_CONFIG = {
    "model": {
        "target": "cldm.cldm.ControlLDM",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.0120,
            "timesteps": 1000,
            "image_size": 8,
            "scale_factor": 0.18215,
            "control_stage_config": {
                "target": "cldm.cldm.ControlNet",
                "params": {**{k: v for k, v in TINY_UNET.items() if k != "out_channels"}, "hint_channels": 4},
            },
            "unet_config": {"target": "cldm.cldm.ControlledUnetModel", "params": TINY_UNET},
            "first_stage_config": {
                "target": "ldm.models.autoencoder.AutoencoderKL",
                "params": {
                    "embed_dim": 4,
                    "ddconfig": {
                        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                        "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
                    },
                },
            },
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenDinoV2Encoder",
                                  "params": {"image_size": 28}},
        },
    }
}


class LdmWriter:
    """Random tensors under the LDM (openaimodel / ldm autoencoder / cldm) parameter names and shapes."""

    def __init__(self, seed: int = 0, meta: bool = False) -> None:
        self.state: dict[str, torch.Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.meta = meta  # shapes only: the full-size architecture without the memory

    def tensor(self, name: str, *shape: int) -> None:
        if self.meta:
            self.state[name] = torch.empty(*shape, device="meta")
        else:
            self.state[name] = torch.randn(*shape, generator=self.generator) * 0.2

    def conv(self, name: str, c_in: int, c_out: int, k: int = 3) -> None:
        self.tensor(f"{name}.weight", c_out, c_in, k, k)
        self.tensor(f"{name}.bias", c_out)

    def linear(self, name: str, c_in: int, c_out: int, bias: bool = True) -> None:
        self.tensor(f"{name}.weight", c_out, c_in)
        if bias:
            self.tensor(f"{name}.bias", c_out)

    def norm(self, name: str, c: int) -> None:
        self.tensor(f"{name}.weight", c)
        if not self.meta:
            self.state[f"{name}.weight"] = 1 + self.state[f"{name}.weight"] / 2
        self.tensor(f"{name}.bias", c)

    def resblock(self, name: str, c_in: int, c_out: int, emb: int) -> None:  # openaimodel.ResBlock
        self.norm(f"{name}.in_layers.0", c_in)
        self.conv(f"{name}.in_layers.2", c_in, c_out)
        self.linear(f"{name}.emb_layers.1", emb, c_out)
        self.norm(f"{name}.out_layers.0", c_out)
        self.conv(f"{name}.out_layers.3", c_out, c_out)
        if c_in != c_out:
            self.conv(f"{name}.skip_connection", c_in, c_out, 1)

    def transformer(self, name: str, c: int, context: int) -> None:  # attention.SpatialTransformer, use_linear
        self.norm(f"{name}.norm", c)
        self.linear(f"{name}.proj_in", c, c)
        block = f"{name}.transformer_blocks.0"
        for attn, kv_dim in (("attn1", c), ("attn2", context)):
            self.linear(f"{block}.{attn}.to_q", c, c, bias=False)
            self.linear(f"{block}.{attn}.to_k", kv_dim, c, bias=False)
            self.linear(f"{block}.{attn}.to_v", kv_dim, c, bias=False)
            self.linear(f"{block}.{attn}.to_out.0", c, c)
        self.linear(f"{block}.ff.net.0.proj", c, 8 * c)  # GEGLU: 2 x 4c
        self.linear(f"{block}.ff.net.2", 4 * c, c)
        for norm in ("norm1", "norm2", "norm3"):
            self.norm(f"{block}.{norm}", c)
        self.linear(f"{name}.proj_out", c, c)

    def encoder_half(self, prefix: str, p: dict) -> list[int]:
        """time_embed, input_blocks and middle_block (shared by the UNet and the ControlNet); the skip widths."""
        ch, emb, ctx = p["model_channels"], 4 * p["model_channels"], p["context_dim"]
        self.linear(f"{prefix}time_embed.0", ch, emb)
        self.linear(f"{prefix}time_embed.2", emb, emb)
        self.conv(f"{prefix}input_blocks.0.0", p["in_channels"], ch)
        chans, index, ds = [ch], 1, 1
        for level, mult in enumerate(p["channel_mult"]):
            for _ in range(p["num_res_blocks"]):
                self.resblock(f"{prefix}input_blocks.{index}.0", ch, mult * p["model_channels"], emb)
                ch = mult * p["model_channels"]
                if ds in p["attention_resolutions"]:
                    self.transformer(f"{prefix}input_blocks.{index}.1", ch, ctx)
                chans.append(ch)
                index += 1
            if level != len(p["channel_mult"]) - 1:
                self.conv(f"{prefix}input_blocks.{index}.0.op", ch, ch)
                chans.append(ch)
                index += 1
                ds *= 2
        self.resblock(f"{prefix}middle_block.0", ch, ch, emb)
        self.transformer(f"{prefix}middle_block.1", ch, ctx)
        self.resblock(f"{prefix}middle_block.2", ch, ch, emb)
        return chans

    def unet(self, p: dict) -> None:
        prefix = "model.diffusion_model."
        chans = self.encoder_half(prefix, p)
        emb, ch, index = 4 * p["model_channels"], chans[-1], 0
        ds = 2 ** (len(p["channel_mult"]) - 1)
        for level, mult in list(enumerate(p["channel_mult"]))[::-1]:
            for i in range(p["num_res_blocks"] + 1):
                skip = chans.pop()
                self.resblock(f"{prefix}output_blocks.{index}.0", ch + skip, p["model_channels"] * mult, emb)
                ch = p["model_channels"] * mult
                layer = 1
                if ds in p["attention_resolutions"]:
                    self.transformer(f"{prefix}output_blocks.{index}.1", ch, p["context_dim"])
                    layer = 2
                if level and i == p["num_res_blocks"]:
                    self.conv(f"{prefix}output_blocks.{index}.{layer}.conv", ch, ch)
                    ds //= 2
                index += 1
        self.norm(f"{prefix}out.0", ch)
        self.conv(f"{prefix}out.2", ch, p["out_channels"])

    def controlnet(self, p: dict, hint_channels: int) -> None:
        prefix = "control_model."
        chans = self.encoder_half(prefix, p)
        hint = [(hint_channels, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256)]
        for i, (c_in, c_out) in enumerate(hint):
            self.conv(f"{prefix}input_hint_block.{2 * i}", c_in, c_out)
        self.conv(f"{prefix}input_hint_block.14", 256, p["model_channels"])
        for i, ch in enumerate(chans):
            self.conv(f"{prefix}zero_convs.{i}.0", ch, ch, 1)
        self.conv(f"{prefix}middle_block_out.0", chans[-1], chans[-1], 1)

    def vae(self, dd: dict, embed_dim: int) -> None:  # ldm.modules.diffusionmodules.model Encoder/Decoder
        prefix, ch, mults, z = "first_stage_model.", dd["ch"], dd["ch_mult"], dd["z_channels"]

        def block(name: str, c_in: int, c_out: int) -> None:
            self.norm(f"{name}.norm1", c_in)
            self.conv(f"{name}.conv1", c_in, c_out)
            self.norm(f"{name}.norm2", c_out)
            self.conv(f"{name}.conv2", c_out, c_out)
            if c_in != c_out:
                self.conv(f"{name}.nin_shortcut", c_in, c_out, 1)

        def mid(name: str, c: int) -> None:
            block(f"{name}.mid.block_1", c, c)
            self.norm(f"{name}.mid.attn_1.norm", c)
            for part in ("q", "k", "v", "proj_out"):
                self.conv(f"{name}.mid.attn_1.{part}", c, c, 1)
            block(f"{name}.mid.block_2", c, c)

        enc = f"{prefix}encoder"
        self.conv(f"{enc}.conv_in", dd["in_channels"], ch)
        c_in = ch
        for i, mult in enumerate(mults):
            for j in range(dd["num_res_blocks"]):
                block(f"{enc}.down.{i}.block.{j}", c_in, ch * mult)
                c_in = ch * mult
            if i != len(mults) - 1:
                self.conv(f"{enc}.down.{i}.downsample.conv", c_in, c_in)
        mid(enc, c_in)
        self.norm(f"{enc}.norm_out", c_in)
        self.conv(f"{enc}.conv_out", c_in, 2 * z)
        dec = f"{prefix}decoder"
        c_in = ch * mults[-1]
        self.conv(f"{dec}.conv_in", z, c_in)
        mid(dec, c_in)
        for i in reversed(range(len(mults))):
            for j in range(dd["num_res_blocks"] + 1):
                block(f"{dec}.up.{i}.block.{j}", c_in, ch * mults[i])
                c_in = ch * mults[i]
            if i != 0:
                self.conv(f"{dec}.up.{i}.upsample.conv", c_in, c_in)
        self.norm(f"{dec}.norm_out", c_in)
        self.conv(f"{dec}.conv_out", c_in, dd["out_ch"])
        self.conv(f"{prefix}quant_conv", 2 * z, 2 * embed_dim, 1)
        self.conv(f"{prefix}post_quant_conv", embed_dim, z, 1)


def tiny_ldm_state(encoder) -> dict[str, torch.Tensor]:
    params = TINY_LDM_CONFIG["model"]["params"]
    writer = LdmWriter()
    writer.unet(params["unet_config"]["params"])
    writer.controlnet(params["control_stage_config"]["params"], 4)
    first = params["first_stage_config"]["params"]
    writer.vae(first["ddconfig"], first["embed_dim"])
    writer.linear("cond_stage_model.projector", encoder.config.hidden_size, TINY_UNET["context_dim"])
    # The frozen DINOv2 copy the official checkpoint carries, and LDM's schedule buffers.
    writer.state["cond_stage_model.model.cls_token"] = encoder.embeddings.cls_token.detach().clone()
    writer.state["cond_stage_model.model.patch_embed.proj.weight"] = (
        encoder.embeddings.patch_embeddings.projection.weight.detach().clone()
    )
    writer.state["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    writer.state["logvar"] = torch.zeros(1000)
    return writer.state


class NotATensor:
    """A pickled object besides tensors (what a Lightning callback state can hold)."""


pytestmark = pytest.mark.usefixtures("single_thread_editor_models")


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory) -> Path:
    from editors.anydoor.pipeline import tiny_dinov2

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    tiny_dinov2().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory, tiny_dinov2_dir) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A tiny checkpoint in the official Lightning layout (state_dict + optimizer) and its model YAML."""
    from transformers import Dinov2Model

    root = tmp_path_factory.mktemp("ckpt")
    state = tiny_ldm_state(Dinov2Model.from_pretrained(tiny_dinov2_dir))
    checkpoint = {
        "epoch": 1,
        "global_step": 8687,
        "pytorch-lightning_version": "1.5.0",
        "state_dict": state,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-5, "params": [0]}]}],
        "lr_schedulers": [],
    }
    path = root / "epoch=1-step=8687.ckpt"
    torch.save(checkpoint, path)
    config = root / "anydoor-tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_LDM_CONFIG))
    return path, config, state


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "editors", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=240)


def run_clis(*arg_lists: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """`run_cli` for independent commands, started together (one core each) and awaited in order."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    processes = [
        (args, subprocess.Popen([sys.executable, "-m", "editors", *args], cwd=REPO, env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for args in arg_lists
    ]
    results = []
    for args, process in processes:
        stdout, stderr = process.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m editors ARGS` in this process (the same `main` the module runs): (exit code, stdout, stderr)."""
    from editors.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def converted(official_checkpoint, tiny_dinov2_dir, tmp_path_factory) -> Path:
    from editors.__main__ import main

    path, config, _ = official_checkpoint
    out = tmp_path_factory.mktemp("converted") / "anydoor"
    code = main(["convert-anydoor", str(path), str(out), "--image-encoder", str(tiny_dinov2_dir),
                 "--original-config", str(config), "--dtype", "float32"])
    assert code == 0 and (out / "model_index.json").is_file()
    return out


def test_converter_cli_reports_what_it_dropped(official_checkpoint, tiny_dinov2_dir, tmp_path: Path, capsys) -> None:
    path, config, _ = official_checkpoint
    out = tmp_path / "anydoor"
    code, stdout, stderr = cli(capsys, "convert-anydoor", str(path), str(out), "--image-encoder",
                               str(tiny_dinov2_dir), "--original-config", str(config))
    assert code == 0 and stdout.strip() == str(out)
    assert "optimizer_states" in stderr and "epoch" in stderr  # dropped, and said so
    code, _, stderr = cli(capsys, "convert-anydoor", str(path), str(out), "--image-encoder", str(tiny_dinov2_dir),
                          "--original-config", str(config))
    assert code == 1 and "already exists" in stderr  # never over an existing model


# ---- converter ------------------------------------------------------------------------------------------------


def test_official_architecture_maps_key_for_key() -> None:
    """configs/anydoor.yaml at full size (shapes only, on the meta device): every LDM tensor lands on a diffusers
    parameter of the same shape and no parameter is left out, so the real checkpoint loads strictly."""
    from editors.anydoor.convert import ANYDOOR_LDM_CONFIG, component_class, map_anydoor_state

    params = ANYDOOR_LDM_CONFIG["model"]["params"]
    writer = LdmWriter(meta=True)
    writer.unet(params["unet_config"]["params"])
    writer.controlnet(params["control_stage_config"]["params"], 4)
    first = params["first_stage_config"]["params"]
    writer.vae(first["ddconfig"], first["embed_dim"])
    writer.linear("cond_stage_model.projector", 1536, 1024)
    assert sum(k.startswith("model.diffusion_model.") for k in writer.state) == 686  # SD 2.x UNet tensors
    parts = map_anydoor_state(writer.state, ANYDOOR_LDM_CONFIG)
    for name, part in parts.items():
        with torch.device("meta"):
            module = component_class(part.class_name)(**part.config)
        expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
        assert {key: tuple(value.shape) for key, value in part.weights.items()} == expected, name
    unet = parts["unet"].config
    assert unet["cross_attention_dim"] == 1024 and unet["use_linear_projection"] is True
    assert list(unet["attention_head_dim"]) == [5, 10, 20, 20]  # 64-channel heads
    assert unet["sample_size"] == 64 and parts["vae"].config["scaling_factor"] == pytest.approx(0.18215)
    assert parts["controlnet"].config["conditioning_channels"] == 4
    assert parts["image_projector"].config == {"in_features": 1536, "out_features": 1024}


def test_converted_folder_is_safetensors_and_loads(converted: Path) -> None:
    from editors.anydoor.pipeline import load_anydoor_pipeline

    files = {p.relative_to(converted).as_posix() for p in converted.rglob("*") if p.is_file()}
    weights = {f for f in files if f.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".pth"))}
    assert weights == {f"{c}/{n}" for c, n in [("unet", "diffusion_pytorch_model.safetensors"),
                                                ("controlnet", "diffusion_pytorch_model.safetensors"),
                                                ("vae", "diffusion_pytorch_model.safetensors"),
                                                ("image_projector", "diffusion_pytorch_model.safetensors"),
                                                ("image_encoder", "model.safetensors")]}
    pipe = load_anydoor_pipeline(str(converted), torch.device("cpu"), torch.float32)
    assert (pipe.crop_size, pipe.encoder_size) == (64, 28)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.steps_offset == 1
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    pipe.scheduler.set_timesteps(50)
    assert pipe.scheduler.timesteps[0] == 981 and pipe.scheduler.timesteps[-1] == 1  # LDM's DDIM "uniform" steps
    with torch.no_grad():
        pipe.controlnet.conv_in.weight[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="conv_in is not zero"):
        pipe.check_components()  # a ControlNet that would see the latent is not AnyDoor's


def test_converted_weights_compute_like_the_ldm_layers(converted: Path, official_checkpoint) -> None:
    from editors.anydoor.pipeline import load_anydoor_pipeline

    _, _, ldm = official_checkpoint
    pipe = load_anydoor_pipeline(str(converted), torch.device("cpu"), torch.float32)
    unet, controlnet, vae = pipe.unet, pipe.controlnet, pipe.vae
    g = torch.Generator().manual_seed(3)
    x32 = torch.randn(1, 32, 8, 8, generator=g)

    def w(name: str) -> torch.Tensor:
        return ldm[name]

    with torch.no_grad():
        # A resnet conv lands in the first down block.
        ref = F.conv2d(x32, w("model.diffusion_model.input_blocks.1.0.in_layers.2.weight"),
                       w("model.diffusion_model.input_blocks.1.0.in_layers.2.bias"), padding=1)
        torch.testing.assert_close(unet.down_blocks[0].resnets[0].conv1(x32), ref, rtol=0, atol=1e-6)
        # Cross-attention keys project the DINOv2 tokens (context width 32).
        context = torch.randn(1, 5, 32, generator=g)
        attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
        ref = context @ w("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").T
        torch.testing.assert_close(attn.to_k(context), ref, rtol=0, atol=1e-6)
        # The decoder's skip-connection conv and the last up block's projection.
        x128 = torch.randn(1, 128, 4, 4, generator=g)
        ref = F.conv2d(x128, w("model.diffusion_model.output_blocks.0.0.skip_connection.weight"),
                       w("model.diffusion_model.output_blocks.0.0.skip_connection.bias"))
        torch.testing.assert_close(unet.up_blocks[0].resnets[0].conv_shortcut(x128), ref, rtol=0, atol=1e-6)
        tokens = torch.randn(1, 16, 32, generator=g)
        ref = F.linear(tokens, w("model.diffusion_model.output_blocks.3.1.proj_out.weight"),
                       w("model.diffusion_model.output_blocks.3.1.proj_out.bias"))
        torch.testing.assert_close(unet.up_blocks[1].attentions[1].proj_out(tokens), ref, rtol=0, atol=1e-6)
        # The VAE's encoder attention was a 1x1 conv in LDM.
        x64 = torch.randn(1, 3, 64, generator=g)
        ref = F.linear(x64, w("first_stage_model.encoder.mid.attn_1.q.weight")[:, :, 0, 0],
                       w("first_stage_model.encoder.mid.attn_1.q.bias"))
        torch.testing.assert_close(vae.encoder.mid_block.attentions[0].to_q(x64), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(pipe.image_projector.proj.weight, w("cond_stage_model.projector.weight"))

        # The ControlNet never sees the latent: conv_in is zero, and its first residual is exactly
        # zero_convs.0(input_hint_block(hint)) computed from the LDM tensors, whatever the latent.
        assert not controlnet.conv_in.weight.any() and not controlnet.conv_in.bias.any()
        assert not controlnet.conv_in(torch.randn(1, 4, 8, 8, generator=g)).any()
        hint = torch.rand(1, 4, 64, 64, generator=g) * 2 - 1
        h = hint
        for i in range(8):
            stride = 2 if i in (2, 4, 6) else 1
            h = F.conv2d(h, w(f"control_model.input_hint_block.{2 * i}.weight"),
                         w(f"control_model.input_hint_block.{2 * i}.bias"), stride=stride, padding=1)
            h = F.silu(h) if i < 7 else h
        ref = F.conv2d(h, w("control_model.zero_convs.0.0.weight"), w("control_model.zero_convs.0.0.bias"))
        outputs = []
        for _ in range(2):
            latent = torch.randn(1, 4, 8, 8, generator=g)
            down, mid = controlnet(latent, 500, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
            outputs.append(down[0])
            torch.testing.assert_close(down[0], ref, rtol=1e-5, atol=1e-5)
        assert len(down) == 4 and mid.shape == (1, 64, 4, 4)


def test_converter_reads_a_safetensors_copy(official_checkpoint, tiny_dinov2_dir, converted: Path,
                                            tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from editors.anydoor.convert import convert_anydoor

    _, config, state = official_checkpoint
    weights = tmp_path / "anydoor.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    out = convert_anydoor(weights, tmp_path / "from-safetensors", image_encoder=str(tiny_dinov2_dir),
                          original_config=config, dtype="float32")
    for part in ("unet", "controlnet", "vae", "image_projector"):
        ours = load_file(str(out / part / "diffusion_pytorch_model.safetensors"))
        reference = load_file(str(converted / part / "diffusion_pytorch_model.safetensors"))
        assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)


def test_converter_refuses_pickled_objects(official_checkpoint, tiny_dinov2_dir, tmp_path: Path, capsys) -> None:
    _, config, state = official_checkpoint
    bad = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "callbacks": {"ModelCheckpoint": NotATensor()}}, bad)
    out = tmp_path / "out"
    code, _, stderr = cli(capsys, "convert-anydoor", str(bad), str(out), "--image-encoder", str(tiny_dinov2_dir),
                          "--original-config", str(config))
    assert code == 1
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "NotATensor" in lines[-1] and "weights_only=True" in lines[-1]
    assert not out.exists() and not list(tmp_path.glob(".out-*"))


def test_converter_refuses_other_checkpoints(official_checkpoint, tmp_path: Path) -> None:
    from editors.anydoor.convert import ConversionError, convert_anydoor

    _, config, state = official_checkpoint
    no_control = tmp_path / "sd21.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("control_model.")}}, no_control)
    with pytest.raises(ConversionError, match=r"not an AnyDoor checkpoint.*ControlNet \(control_model"):
        convert_anydoor(no_control, tmp_path / "a", original_config=config)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        convert_anydoor(garbage, tmp_path / "b", original_config=config)
    with pytest.raises(ConversionError, match="does not exist.*xichenhku/AnyDoor"):
        convert_anydoor(tmp_path / "missing.ckpt", tmp_path / "c", original_config=config)
    assert not any((tmp_path / name).exists() for name in "abc")


class RunsCode:
    """A pickle payload that would run a shell command when unpickled (it must never be)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_converter_messages_are_one_clear_line(tmp_path: Path) -> None:
    """From the CLI, one line each and no torch warning: a plain pickle carrying code, a pickle naming a function,
    a folder given as the checkpoint, a non-empty OUT folder."""
    import pickle

    marker = tmp_path / "ran"
    plain, named = tmp_path / "plain.ckpt", tmp_path / "named.ckpt"
    plain.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=4))
    named.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=2))
    refused = "safe loading (torch.load with weights_only=True) refused it and nothing in it ran."
    folder, taken = tmp_path / "ckpt-folder", tmp_path / "taken"
    folder.mkdir()
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    # Four independent processes (none writes anything), run side by side.
    from_plain, from_named, from_folder, into_taken = run_clis(
        ("convert-anydoor", str(plain), str(tmp_path / "out")),
        ("convert-anydoor", str(named), str(tmp_path / "out")),
        ("convert-anydoor", str(folder), str(tmp_path / "out")),
        ("convert-anydoor", str(plain), str(taken)),
    )
    result = from_plain
    assert result.returncode == 1 and "Warning" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {plain} is a plain pickle, not an AnyDoor checkpoint of tensors; {refused} Give the official AnyDoor "
        "checkpoint epoch=1-step=8687.ckpt (see docs/editors.md)."
    )
    result = from_named
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Warning" not in result.stderr
    assert last.startswith(f"error: {named} holds a pickled posix.system object, not only tensors; {refused}")
    assert not marker.exists() and not (tmp_path / "out").exists()

    result = from_folder
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {folder} is a folder; give the checkpoint file itself (epoch=1-step=8687.ckpt, or a "
        "weights-only copy or .safetensors)."
    )
    result = into_taken
    assert result.stderr.strip() == (
        f"error: {taken} already exists and is not an empty folder; give a new folder for the converted AnyDoor model."
    )


def test_dinov2_tokens_use_the_official_position_interpolation() -> None:
    """ViT-g/14 runs at 224 px with a 37x37 position grid; AnyDoor's DINOv2 code resizes it with
    scale_factor (16 + 0.1) / 37, which transformers does not: the pipeline's tokens must use the official resize."""
    from editors.anydoor.pipeline import (
        AnyDoorImageProjector,
        AnyDoorPipeline,
        dinov2_position_embeddings,
        make_scheduler,
        tiny_dinov2,
        tiny_unet_config,
        tiny_vae,
        zero_conv_in,
    )
    from diffusers import ControlNetModel, UNet2DConditionModel

    # The resize itself, against a cubic convolution (a = -0.75, PyTorch's bicubic) written out: each output
    # samples the grid at the official source position (dst + 0.5) * side / (rows + 0.1) - 0.5, not at
    # transformers' (dst + 0.5) * side / rows - 0.5.
    def cubic(x: float, a: float = -0.75) -> float:
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    def sample(values: list[float], src: float) -> float:
        base = int(np.floor(src))
        t = src - base
        taps = [values[min(max(base + k, 0), len(values) - 1)] for k in (-1, 0, 1, 2)]
        return sum(v * cubic(t - k) for v, k in zip(taps, (-1, 0, 1, 2), strict=True))

    side, rows = 37, 16
    column = [float(np.sin(i / 3.0)) for i in range(side)]
    grid = torch.cat([torch.zeros(1), torch.tensor(column).repeat(side)]).reshape(1, 1 + side * side, 1)
    resized = dinov2_position_embeddings(grid, 224, 224, 14)[0, 1:, 0].reshape(rows, rows)
    for dst in range(rows):
        official = sample(column, (dst + 0.5) * side / (rows + 0.1) - 0.5)
        assert resized[5, dst].item() == pytest.approx(official, abs=1e-4)
    transformers_like = [sample(column, (dst + 0.5) * side / rows - 0.5) for dst in range(rows)]
    assert max(abs(resized[5, d].item() - transformers_like[d]) for d in range(rows)) > 0.05

    # The pipeline's tokens: DINOv2 run by hand with the official position embeddings, then projected.
    torch.manual_seed(0)
    encoder = tiny_dinov2(image_size=42).eval()  # a 3x3 grid, run at 28 px (2x2)
    unet_config = tiny_unet_config()
    pipe = AnyDoorPipeline(
        vae=tiny_vae(),
        unet=UNet2DConditionModel(**unet_config, out_channels=4, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        controlnet=zero_conv_in(ControlNetModel(**unet_config, conditioning_channels=4)),
        image_encoder=encoder,
        image_projector=AnyDoorImageProjector(24, 32),
        scheduler=make_scheduler(),
        crop_size=64,
        encoder_size=28,
    )
    reference = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    tokens = pipe.encode_reference(reference)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = (reference - mean) / std
    with torch.no_grad():
        embeddings = encoder.embeddings
        patches = embeddings.patch_embeddings(pixels)
        x = torch.cat([embeddings.cls_token.expand(2, -1, -1), patches], dim=1)
        x = x + dinov2_position_embeddings(embeddings.position_embeddings, 28, 28, 14)
        expected = pipe.image_projector(encoder.layernorm(encoder.encoder(x).last_hidden_state))
        transformers_tokens = pipe.image_projector(encoder(pixel_values=pixels).last_hidden_state)
    assert tokens.shape == (2, 5, 32)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    assert (tokens - transformers_tokens).abs().max() > 1e-3  # the resize matters
    assert not encoder.embeddings._forward_hooks  # the hook is removed after each use


# ---- preprocessing on a real frame and reference ----------------------------------------------------------------


@pytest.fixture(scope="module")
def kitten_frame() -> Image.Image:
    assert KITTEN.is_file(), f"demo data missing: {KITTEN}"
    return first_frame(KITTEN)


def dog_mask() -> np.ndarray:
    """The dog in the reference photo, as an ellipse (a coarse hand-made subject mask)."""
    mask = Image.new("L", (512, 512), 0)
    ImageDraw.Draw(mask).ellipse((175, 40, 460, 435), fill=255)
    return np.asarray(mask) > 127


def test_collage_sobel_and_mask_channel(kitten_frame: Image.Image) -> None:
    from editors.anydoor.preprocess import box_mask, prepare_pair

    dog = Image.open(DOG).convert("RGB")
    x0, y0, x1, y1 = KITTEN_BOX
    region = box_mask((y0, y1, x0, x1), kitten_frame.size)
    pair = prepare_pair(kitten_frame, region, dog, dog_mask(), crop_size=512, encoder_size=224)

    assert pair.hint.shape == (512, 512, 4) and pair.hint.dtype == np.float32
    assert pair.hint[..., :3].min() >= -1 and pair.hint[..., :3].max() <= 1
    ry0, ry1, rx0, rx1 = pair.region_box
    assert ry0 <= y0 and rx0 <= x0 and ry1 >= y1 and rx1 >= x1  # the region's box, grown 1.1x
    assert pair.crop_box == (0, 512, 0, 512)  # the grown crop is clipped to the frame: a square, no padding
    mask_channel = pair.hint[..., 3]
    assert set(np.unique(mask_channel)) == {0.0, 1.0}
    # crop = frame at 512: for a box the channel marks the grown box the collage fills (as both official scripts do)
    assert np.array_equal(mask_channel > 0, box_mask(pair.region_box, kitten_frame.size))
    assert (mask_channel > 0).sum() > region.sum()
    # Outside the region's box the collage is the frame; inside, the subject's high-frequency map.
    expected = np.asarray(kitten_frame).astype(np.float32) / 127.5 - 1
    outside = np.ones((512, 512), bool)
    outside[ry0:ry1, rx0:rx1] = False
    assert np.array_equal(pair.hint[..., :3][outside], expected[outside])
    assert not np.array_equal(pair.hint[ry0:ry1, rx0:rx1, :3], expected[ry0:ry1, rx0:rx1])

    # The reference: the subject on white at 224; its Sobel map keeps strong edges only, weighted by the colours.
    assert pair.reference.shape == (224, 224, 3) and 0 <= pair.reference.min() and pair.reference.max() <= 1
    assert np.all(pair.reference_image[:8, :8] == 255) and np.all(pair.reference_image[-8:, -8:] == 255)
    sobel = pair.sobel_map
    assert sobel.shape == (224, 224, 3) and sobel.dtype == np.uint8
    assert np.all(sobel[:12] == 0) and np.all(sobel[:, :12] == 0)  # no edges on the white padding (eroded mask)
    assert 0.02 < (sobel.max(-1) > 0).mean() < 0.6  # some of the dog's edges, not everything

    # A painted region, by default (the official demo's default): the mask channel is its grown bounding box, the
    # same hint as the box itself.
    ellipse = Image.new("L", kitten_frame.size, 0)
    ImageDraw.Draw(ellipse).ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    painted = np.asarray(ellipse) > 127
    boxed = prepare_pair(kitten_frame, painted, dog, dog_mask(), crop_size=512, encoder_size=224)
    assert boxed.region_box == pair.region_box and np.array_equal(boxed.hint, pair.hint)
    # With shape control (the demo's option) the mask channel follows the painted shape; the collage is unchanged.
    shaped = prepare_pair(kitten_frame, painted, dog, dog_mask(), crop_size=512, encoder_size=224, shape_control=True)
    assert shaped.region_box == pair.region_box and np.array_equal(shaped.hint[..., :3], pair.hint[..., :3])
    assert np.array_equal(shaped.hint[..., 3] > 0, painted)
    # Shape control on a box marks the box as painted, not grown (the demo uses the drawn mask as it is).
    box_shape = prepare_pair(kitten_frame, region, dog, dog_mask(), crop_size=512, encoder_size=224, shape_control=True)
    assert np.array_equal(box_shape.hint[..., 3] > 0, region)


def test_sobel_map_keeps_strong_edges_weighted_by_colour() -> None:
    from editors.anydoor.preprocess import sobel_map

    step = np.zeros((224, 224, 3), np.uint8)
    step[:, 112:] = (200, 100, 50)
    edges = sobel_map(step, np.ones((224, 224), np.float32))
    assert list(np.flatnonzero(edges.any(axis=(0, 2)))) == [111, 112]  # only at the step
    # A saturated gradient is 255 in x, 0 in y: half weight, times the colour on the bright side.
    assert np.abs(edges[100, 112].astype(int) - np.array([200, 100, 50]) * 0.5).max() <= 16
    faint = np.full((224, 224, 3), (200, 100, 50), np.uint8)
    faint[:, 112:] = (190, 95, 45)
    assert not sobel_map(faint, np.ones((224, 224), np.float32)).any()  # below the threshold of 50
    outside = np.ones((224, 224), np.float32)
    outside[:, 100:] = 0
    assert not sobel_map(step, outside).any()  # edges off the (eroded) subject mask are dropped


def test_padding_is_minus_one_in_the_mask_channel(kitten_frame: Image.Image) -> None:
    from editors.anydoor.preprocess import box_from_text, box_mask, prepare_pair

    dog = Image.open(DOG).convert("RGB")
    box = box_from_text("0,200,100,300", kitten_frame.size)  # at the left edge: the crop is cut by the frame
    pair = prepare_pair(kitten_frame, box_mask(box, kitten_frame.size), dog, dog_mask(), 512, 224)
    cy0, cy1, cx0, cx1 = pair.crop_box
    assert cx0 == 0 and cy1 - cy0 > cx1 - cx0  # taller than wide: padded left and right to a square
    mask_channel = pair.hint[..., 3]
    assert set(np.unique(mask_channel)) == {-1.0, 0.0, 1.0}
    pad_columns = np.flatnonzero((mask_channel == -1).all(axis=0))
    side, width = cy1 - cy0, cx1 - cx0
    assert abs(len(pad_columns) - 512 * (side - width) / side) <= 2
    interior = [c for c in pad_columns if {c - 1, c + 1} <= set(pad_columns) | {-1, 512}]
    assert len(interior) >= len(pad_columns) - 2
    assert np.all(pair.hint[:, interior, :3] == -1)  # black padding in the collage (linear resize blends the seam)


def test_paste_back_changes_only_the_region_box(kitten_frame: Image.Image) -> None:
    from editors.anydoor.preprocess import box_from_text, box_mask, paste_back, prepare_pair

    dog = Image.open(DOG).convert("RGB")
    for text in ("170,40,470,430", "0,200,100,300"):
        box = box_from_text(text, kitten_frame.size)
        pair = prepare_pair(kitten_frame, box_mask(box, kitten_frame.size), dog, dog_mask(), 512, 224)
        generated = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
        out = np.asarray(paste_back(generated, kitten_frame, pair))
        source = np.asarray(kitten_frame)
        ry0, ry1, rx0, rx1 = pair.region_box
        inside = np.zeros(source.shape[:2], bool)
        inside[ry0:ry1, rx0:rx1] = True
        assert out.shape == source.shape and out.dtype == np.uint8
        assert np.array_equal(out[~inside], source[~inside])  # bit-exact outside the region's box
        assert (out[inside] != source[inside]).any(axis=-1).mean() > 0.9


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ("0,0,512,512", "covers nearly the whole frame"),
        ("10,10,14,40", "only 4x30 pixels"),
        ("10,10,600,40", "reaches outside the 512x512 frame"),
        ("40,10,10,40", "is empty"),
        ("a,b,c", "four finite numbers"),
        ("0,0,inf,inf", r"box '0,0,inf,inf' must be four finite numbers x0,y0,x1,y1"),
        ("nan,0,20,20", "four finite numbers"),
        ("0,0,1e999,20", "four finite numbers"),
        ("-10,-10,20,20", "reaches outside"),
    ],
)
def test_bad_regions_are_refused(box: str, message: str, kitten_frame: Image.Image) -> None:
    from editors.anydoor.preprocess import box_from_text, box_mask, target_region

    with pytest.raises(EditorError, match=message):
        target_region(box_mask(box_from_text(box, kitten_frame.size), kitten_frame.size))


def test_box_text_is_quoted_short_and_spaces_separate_too(kitten_frame: Image.Image) -> None:
    from editors.anydoor.preprocess import box_from_text

    assert box_from_text(" 10 20  30 40 ", kitten_frame.size) == box_from_text("10,20,30,40", kitten_frame.size)
    huge = "1," * 50_000  # a 100 KB box
    with pytest.raises(EditorError, match="four finite numbers") as caught:
        box_from_text(huge, kitten_frame.size)
    message = str(caught.value)
    assert len(message) < 200 and "…'" in message and message.count("1,") <= 41


# ---- rembg offline on a tiny ONNX model --------------------------------------------------------------------------


def write_red_channel_onnx(path: Path) -> Path:
    """A U^2-Net stand-in: the 'saliency' is the normalised red channel (input 1x3x320x320 -> 1x1x320x320)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["input.1", "red"], ["d0"], axis=1)],
        "red_saliency",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[helper.make_tensor("red", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def red_square_photo() -> tuple[Image.Image, np.ndarray]:
    photo = Image.new("RGB", (200, 160), (20, 40, 200))
    ImageDraw.Draw(photo).rectangle((60, 30, 139, 129), fill=(230, 30, 30))
    truth = np.zeros((160, 200), bool)
    truth[30:130, 60:140] = True
    return photo, truth


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_rembg_runs_offline_on_a_local_model(tmp_path: Path, monkeypatch, no_network) -> None:
    from editors.anydoor.masks import SubjectMasker

    model = write_red_channel_onnx(tmp_path / "u2net-tiny.onnx")  # outside rembg's own folders
    monkeypatch.setenv("ANYV2V_REMBG_MODEL", str(model))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty-home"))
    photo, truth = red_square_photo()
    mask = SubjectMasker()(photo)
    assert mask.shape == truth.shape
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.95
    assert not (tmp_path / "empty-home").exists()  # rembg wrote nothing into its home: no download attempted


def test_missing_rembg_model_says_what_to_put_where(tmp_path: Path, monkeypatch, kitten_frame) -> None:
    from editors.anydoor.masks import missing_rembg_reason

    monkeypatch.delenv("ANYV2V_REMBG_MODEL", raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2"))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    reason = missing_rembg_reason()  # the command line's text: where to put which file, and the flags
    assert str(tmp_path / "u2" / "u2net.onnx") in reason and "rembg's GitHub releases" in reason
    assert "--reference-mask" in reason and "RGBA" in reason
    rembg_download = tmp_path / "rembg" / "models" / "u2net" / "u2net.onnx"  # where rembg 2.x downloads it
    rembg_download.parent.mkdir(parents=True)
    write_red_channel_onnx(rembg_download)
    assert missing_rembg_reason() is None
    rembg_download.unlink()
    editor = get_editor("anydoor")
    with pytest.raises(EditorError) as caught:
        editor.reference_and_mask({"reference": Image.open(DOG).convert("RGB"), "reference_mask": None},
                                  lambda f, m: None)
    # A web user reads what to do instead, never the server's path or a download instruction; the operator's
    # part (for the server log and the CLI) says which file goes where.
    user = str(caught.value)
    assert "upload a subject mask or an RGBA cut-out" in user
    assert str(tmp_path) not in user and "u2net" not in user and "--" not in user and "http" not in user
    assert str(tmp_path / "u2" / "u2net.onnx") in caught.value.operator and "github.com" in caught.value.operator


# ---- the editor -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_anydoor(tmp_path_factory) -> Path:
    return get_editor("anydoor").make_tiny_model(tmp_path_factory.mktemp("anydoor") / "anydoor-tiny")


def test_editor_declares_inputs_settings_and_availability(tiny_anydoor: Path, tmp_path: Path, monkeypatch) -> None:
    editor = available_editors()["anydoor"]
    assert editor.title == "Subject (AnyDoor)"
    assert [(s.name, s.kind) for s in editor.inputs] == [
        ("reference", "image"), ("reference_mask", "image"), ("mask", "mask"), ("box", "text"),
        ("region_mode", "choice"), ("steps", "int"), ("guidance", "float"), ("seed", "seed"),
    ]
    assert editor.input("steps").default == 50 and editor.input("guidance").default == 5.0
    assert editor.video_settings == {"start_index": 0, "tau_conv": 0.2, "tau_sa": 0.2, "tau_ta": 1.0}
    monkeypatch.delenv("ANYV2V_ANYDOOR_MODEL", raising=False)
    problem = editor.unavailable(str(tmp_path / "nothing"))
    assert editor.unavailable_reason(str(tmp_path / "nothing")) == str(problem)  # what the page shows
    assert str(problem) == (
        "the subject editor (AnyDoor) is not set up on this server: its model is missing; the server's operator "
        "can enable it."
    )
    assert "convert-anydoor" in problem.operator and str(tmp_path / "nothing") in problem.operator
    # A missing rembg model does not make the editor unavailable: a subject mask or an RGBA reference still works.
    monkeypatch.setenv("ANYV2V_REMBG_MODEL", str(tmp_path / "no-such-u2net.onnx"))
    assert editor.unavailable_reason(str(tiny_anydoor)) is None


def test_editor_bad_inputs_fail_before_any_model_work(tiny_anydoor: Path, tmp_path: Path) -> None:
    MODEL_CACHE.clear()  # the cache is shared by every editor: start from empty whatever ran before
    editor = get_editor("anydoor")
    frame = Image.new("RGB", (64, 64), (90, 90, 90))
    dog = Image.open(DOG)
    good = {"reference": dog, "reference_mask": Image.fromarray(dog_mask()), "box": SMALL_BOX, "steps": 1}
    model = str(tiny_anydoor)
    cases = [
        ({**good, "box": ""}, "Target region is required"),
        ({**good, "mask": Image.new("L", (64, 64), 255)}, "one way, painted .* or as a box, not both"),
        ({**good, "box": "", "mask": Image.new("L", (64, 64), 0)}, "Target region is required"),
        ({**good, "box": "", "mask": Image.new("L", (64, 64), 255)}, "covers nearly the whole frame"),
        ({**good, "reference_mask": Image.new("L", (512, 512), 0)}, "Subject mask is empty"),
        ({**good, "reference_mask": Image.new("L", (100, 100), 255)}, "is 100x100 but the subject photo is 512x512"),
        ({**good, "reference": Image.new("RGB", (10, 10)), "reference_mask": None}, "at least 16 pixels"),
        ({**good, "reference": Image.new("RGB", (9000, 20)), "reference_mask": None}, "at most 8192"),
    ]
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    cases.append(({**good, "reference": transparent, "reference_mask": None}, "no subject found"))
    cases.append(({**good, "box": "0,0,inf,inf"}, r"box '0,0,inf,inf' must be four finite numbers"))
    cases.append(({**good, "region_mode": "circle"}, r"Region mode 'circle' is not one of: box, shape"))
    for values, message in cases:
        with pytest.raises(EditorError, match=message) as caught:
            editor.edit(frame, values, model=model)
        assert "--" not in str(caught.value)  # the page's wording; the CLI has its own (`cli_text`)
    with pytest.raises(AnyV2VError, match=r"subject editor \(AnyDoor\) is not set up on this server") as caught:
        editor.edit(frame, good, model=str(tmp_path / "no-such-folder"))
    assert str(tmp_path) not in str(caught.value)
    assert "no-such-folder is missing" in caught.value.cli_text() and "convert-anydoor" in caught.value.cli_text()
    assert not MODEL_CACHE  # nothing was loaded for any of them


def test_region_mode_box_by_default_shape_on_request(tiny_anydoor: Path, monkeypatch) -> None:
    import editors.anydoor.preprocess as preprocess

    editor = get_editor("anydoor")
    assert editor.input("region_mode").default == "box" and editor.input("region_mode").choices == ("box", "shape")
    seen: list[bool] = []
    real = preprocess.prepare_pair

    def spy(*args, shape_control=False, **kwargs):
        seen.append(shape_control)
        return real(*args, shape_control=shape_control, **kwargs)

    monkeypatch.setattr(preprocess, "prepare_pair", spy)
    frame = Image.new("RGB", (64, 64), (90, 90, 90))
    painted = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(painted).ellipse((16, 16, 40, 44), fill=255)
    values = {"reference": Image.open(DOG), "reference_mask": Image.fromarray(dog_mask()), "mask": painted, "steps": 1}
    editor.edit(frame, values, model=str(tiny_anydoor))
    editor.edit(frame, {**values, "region_mode": "Shape"}, model=str(tiny_anydoor))
    assert seen == [False, True]


def test_rgba_reference_uses_its_alpha(tiny_anydoor: Path) -> None:
    editor = get_editor("anydoor")
    dog = Image.open(DOG).convert("RGBA")
    dog.putalpha(Image.fromarray((dog_mask() * 255).astype(np.uint8)))
    messages: list[str] = []
    image, mask = editor.reference_and_mask({"reference": dog, "reference_mask": None},
                                            lambda f, m: messages.append(m))
    assert np.array_equal(mask, dog_mask()) and image.mode == "RGB"
    assert any("transparency as the subject mask" in m for m in messages)


def test_cli_run_then_region_only_changes(tiny_anydoor: Path, tmp_path: Path, capsys) -> None:
    ref_mask = tmp_path / "dog-mask.png"
    Image.fromarray(dog_mask()).save(ref_mask)
    out = tmp_path / "dog.png"
    result = run_cli("run", "--editor", "anydoor", "--video", str(KITTEN), "--width", "64", "--height", "64",
                     "--reference", str(DOG), "--reference-mask", str(ref_mask), "--box", SMALL_BOX,
                     "--steps", "2", "--candidates", "2", "--model", str(tiny_anydoor), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out), str(tmp_path / "dog-1.png")]
    source = np.asarray(first_frame(KITTEN, width=SMALL, height=SMALL))  # what `export-frame` writes
    first, second = (np.asarray(Image.open(p).convert("RGB")) for p in (out, tmp_path / "dog-1.png"))
    changed = (first != source).any(-1)
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 14 and ys.max() < 46 and xs.min() >= 14 and xs.max() < 42  # the 1.1x box of 16,16,40,44
    assert changed[16:44, 16:40].mean() > 0.9
    assert not np.array_equal(first, second)  # seed and seed + 1

    code, _, stderr = cli(capsys, "run", "--editor", "anydoor", "--video", str(KITTEN), "--width", "64", "--height",
                          "64", "--reference", str(DOG), "--reference-mask", str(ref_mask), "--model",
                          str(tiny_anydoor), "--out", str(tmp_path / "none.png"))
    last = stderr.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: Target region is required: give --mask M.png")
    assert "--box x0,y0,x1,y1" in last
    assert not (tmp_path / "none.png").exists()
    base = ["run", "--editor", "anydoor", "--video", str(KITTEN), "--width", "64", "--height", "64", "--reference",
            str(DOG), "--reference-mask", str(ref_mask), "--model", str(tiny_anydoor), "--out", str(tmp_path / "n.png")]
    # Numbers in the box: inf is an input error (not blamed on the model); a negative first number parses.
    code, _, stderr = cli(capsys, *base, "--box", "0,0,inf,inf")
    assert code == 1 and stderr.strip() == (
        "error: box '0,0,inf,inf' must be four finite numbers x0,y0,x1,y1 in frame pixels, e.g. 100,120,300,400."
    )
    code, _, stderr = cli(capsys, *base, "--box", "-10,-10,20,20")
    assert code == 1 and "box '-10,-10,20,20' reaches outside the 64x64 frame" in stderr
    assert not (tmp_path / "n.png").exists()


def test_app_api_subject_edit_then_video(tiny_anydoor: Path, tmp_path_factory) -> None:
    """`/edit_first_frame` with the anydoor editor (box, then a painted-mask file), then `/edit_video` with it."""
    from gradio_client import Client, handle_file

    from tests.app_helpers import CLIP, PROMPT, TINY_EDIT, make_models, read_mp4, run_app

    root = tmp_path_factory.mktemp("app_anydoor")
    env = {**make_models(root / "models"), "ANYV2V_ANYDOOR_MODEL": str(tiny_anydoor)}
    ref_mask = root / "dog-mask.png"
    Image.fromarray(dog_mask()).save(ref_mask)
    region = root / "region.png"
    Image.fromarray(np.pad(np.full((28, 24), 255, np.uint8), ((16, 20), (16, 24)))).save(region)
    with run_app(root, env) as server:
        client = Client(server.url, verbose=False, download_files=str(root / "downloads"))
        common = dict(video=handle_file(str(CLIP)), editor="anydoor", reference=handle_file(str(DOG)),
                      reference_mask=handle_file(str(ref_mask)), steps=2, width=64, height=64,
                      api_name="/edit_first_frame")
        boxed = client.predict(box=SMALL_BOX, **common)
        painted = client.predict(mask=handle_file(str(region)), **common)
        assert len(boxed) == 1 and len(painted) == 1
        a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (boxed[0], painted[0]))
        assert a.shape == (64, 64, 3) and np.array_equal(a, b)  # the same region, given two ways
        video, settings = client.predict(video=handle_file(str(CLIP)), edited_frame=handle_file(boxed[0]),
                                         prompt=PROMPT, api_name="/edit_video", **TINY_EDIT)
        assert read_mp4(video) == (8, (64, 64), 8.0) and Path(settings).suffix == ".json"
