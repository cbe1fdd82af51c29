"""SEINE's 3-D UNet (Chen et al. 2023), as the official AnyV2V `seine/` code computes it, written for this project.

Layout: Stable Diffusion 1.4's 2-D UNet "inflated" to video: every convolution runs per frame, but the ResNet
blocks' GroupNorms (and the output norm) normalise over all frames of a clip together; each transformer block is
spatial self-attention, cross-attention to the text, then **temporal** self-attention over the frame axis, then a
GEGLU feed-forward. Input: 9 channels = noisy latents (4), a first-frame mask (1), the VAE latents of the masked
video (4).

Temporal attention: per head, q is scaled by dim_head^-0.5, rotary position embeddings (the first 32 channels
of each head, interleaved pairs, positions 0..F-1) are applied to q and k, a learned relative-position bias
(32 buckets, max distance 32) is added to the scores, then the softmax. diffusers has no such attention, so it is
our own `TemporalAttention` (a diffusers `Attention` with an `attend_with` of its own that `anyv2v.attention`
uses, so the injection plug-in and row slicing work on it as on any self-attention). Everything else uses
diffusers' building blocks where they compute the same thing (`Attention` for spatial and cross attention,
`FeedForward`, `Timesteps`, `TimestepEmbedding`).

Parameter names equal the official model's state dict (the converter maps nothing but the checkpoint's layout).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..feed_forward import FeedForwardChunks

ROTARY_DIMS = 32  # channels per head that get rotary embeddings (SEINE: RotaryEmbedding(32))
ROTARY_THETA = 10000.0
BIAS_BUCKETS = 32
BIAS_MAX_DISTANCE = 32


class InflatedConv(nn.Conv2d):
    """A 2-D convolution applied to every frame of [B, C, F, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, f, _, _ = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * f, *x.shape[1:2], *x.shape[3:]))
        return y.reshape(b, f, *y.shape[1:]).transpose(1, 2)


class ResnetBlock3D(nn.Module):
    """ResNet block on [B, C, F, H, W]: GroupNorm over (channels of a group, frames, pixels), per-frame convs."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = InflatedConv(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.conv2 = InflatedConv(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = (
            InflatedConv(in_channels, out_channels, kernel_size=1, stride=1, padding=0) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # the conv injection site: this output, before the shortcut
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.conv = InflatedConv(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = InflatedConv(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is None:
            x = F.interpolate(x, scale_factor=[1.0, 2.0, 2.0], mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the frame axis (`freqs`: 1 / theta^(2i/dims), i < dims/2)."""

    def __init__(self, dims: int = ROTARY_DIMS) -> None:
        super().__init__()
        freqs = 1.0 / (ROTARY_THETA ** (torch.arange(0, dims, 2)[: dims // 2].float() / dims))
        self.register_buffer("freqs", freqs)

    def angles(self, length: int, device: torch.device) -> torch.Tensor:
        """[length, dims]: position x frequency, each repeated for its pair of channels (interleaved)."""
        positions = torch.arange(length, device=device, dtype=self.freqs.dtype)
        angles = positions[:, None] * self.freqs[None, :]
        return angles.repeat_interleave(2, dim=-1)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., F, D]; the first `dims` channels rotate pairwise ((x1, x2) -> x1 cos - x2 sin, x2 cos + x1 sin)."""
        angles = self.angles(x.shape[-2], x.device)
        dims = angles.shape[-1]
        part, rest = x[..., :dims], x[..., dims:]
        pairs = part.reshape(*part.shape[:-1], dims // 2, 2)
        half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(part.shape)
        rotated = part * angles.cos() + half * angles.sin()
        return torch.cat((rotated, rest), dim=-1)


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative-position bias over frames: [heads, F, F]."""

    def __init__(self, heads: int, num_buckets: int = BIAS_BUCKETS, max_distance: int = BIAS_MAX_DISTANCE) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, relative: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        n = -relative
        bucket = (n < 0).long() * half
        n = n.abs()
        exact = half // 2
        large = exact + (torch.log(n.float() / exact) / math.log(self.max_distance / exact) * (half - exact)).long()
        large = torch.minimum(large, torch.full_like(large, half - 1))
        return bucket + torch.where(n < exact, n, large)

    def forward(self, frames: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(frames, dtype=torch.long, device=device)
        relative = positions[None, :] - positions[:, None]  # key - query
        return self.relative_attention_bias(self.buckets(relative)).permute(2, 0, 1)


class TemporalAttention(Attention):
    """Self-attention over frames with rotary q/k and a relative-position bias (SEINE's `TemporalAttention`)."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__(query_dim=dim, heads=heads, dim_head=dim_head, bias=False, processor=TemporalAttnProcessor())
        if dim_head < ROTARY_DIMS:
            raise ValueError(f"temporal attention needs a head dim of at least {ROTARY_DIMS}, not {dim_head}")
        self.rotary_emb = RotaryEmbedding(ROTARY_DIMS)
        self.time_rel_pos_bias = RelativePositionBias(heads)

    def attend_with(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *,
        query_key=None,
        max_tokens: int | None = None,
    ) -> torch.Tensor:
        """`anyv2v.attention.attention` for this module: `query_key(inputs, context, rows)` may give Q and K (before
        the rotary embedding, as the reference injects them), `max_tokens` computes a slice of rows at a time."""
        from ...attention import by_row_slices

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("SEINE's temporal attention is a self-attention without a mask")
        x = hidden_states
        frames = x.shape[1]
        bias = self.time_rel_pos_bias(frames, x.device).to(x.dtype)  # [heads, F, F]

        def rows_output(part: slice) -> torch.Tensor:
            if query_key is None:
                query, key = self.to_q(x[part]), self.to_k(x[part])
            else:
                query, key = query_key(x, x, part)
            return self._attend(query, key, self.to_v(x[part]), bias)

        return by_row_slices(x.shape[0], frames, max_tokens, rows_output)

    def _attend(self, query, key, value, bias):
        n, f, inner = query.shape
        dh = inner // self.heads
        q = query.view(n, f, self.heads, dh).transpose(1, 2) * self.scale
        k = key.view(n, f, self.heads, dh).transpose(1, 2)
        v = value.view(n, f, self.heads, dh).transpose(1, 2)
        q = self.rotary_emb.rotate(q)
        k = self.rotary_emb.rotate(k)
        scores = q @ k.transpose(-1, -2) + bias
        scores = scores - scores.amax(dim=-1, keepdim=True)
        probs = scores.softmax(dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(n, f, inner)
        return self.to_out[1](self.to_out[0](out))


class TemporalAttnProcessor:
    """The default processor of `TemporalAttention` (plain: no injection, no slicing). `sliceable`: the bounded
    memory option may swap it for a slicing processor (anyv2v.memory.sliced_attention), which calls
    `attend_with` with a token budget."""

    sliceable = True

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        return attn.attend_with(hidden_states, encoder_hidden_states, attention_mask, temb)


class BasicTransformerBlock(FeedForwardChunks, nn.Module):
    """Spatial self-attention, cross-attention, temporal self-attention, GEGLU feed-forward (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim_head, bias=False, processor=AttnProcessor2_0())
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head, bias=False,
            processor=AttnProcessor2_0(),
        )
        self.norm_temp = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads, dim_head)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        # x: [(B F), HW, C], batch-major; context: [(B F), L, D]
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=context) + x
        bf, pixels, channels = x.shape
        t = x.reshape(bf // frames, frames, pixels, channels).transpose(1, 2).reshape(-1, frames, channels)
        t = self.attn_temp(self.norm_temp(t)) + t  # [(B HW), F, C], batch-major
        x = t.reshape(bf // frames, pixels, frames, channels).transpose(1, 2).reshape(bf, pixels, channels)
        return self._feed_forward(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Per-frame GroupNorm + 1x1 projection in, one transformer block, projection out, residual."""

    def __init__(self, heads: int, dim_head: int, channels: int, groups: int, cross_attention_dim: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim)])
        self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        context = text.repeat_interleave(f, dim=0)  # [(B F), L, D]
        residual = frames
        y = self.proj_in(self.norm(frames))
        inner = y.shape[1]
        y = y.permute(0, 2, 3, 1).reshape(b * f, h * w, inner)
        for block in self.transformer_blocks:
            y = block(y, context, f)
        y = self.proj_out(y.reshape(b * f, h, w, inner).permute(0, 3, 1, 2).contiguous())
        out = y + residual
        return out.reshape(b, f, c, h, w).transpose(1, 2)


class DownBlock3D(nn.Module):
    def __init__(self, in_ch, out_ch, temb, layers, groups, eps, downsample, padding, attention=None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(in_ch if i == 0 else out_ch, out_ch, temb, groups, eps) for i in range(layers)]
        )
        if attention is not None:
            heads, cross = attention
            self.attentions = nn.ModuleList(
                [Transformer3DModel(heads, out_ch // heads, out_ch, groups, cross) for _ in range(layers)]
            )
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample3D(out_ch, padding)]) if downsample else None

    def forward(self, x, temb, text):
        states = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, text)
            states += (x,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                x = down(x)
            states += (x,)
        return x, states


class UpBlock3D(nn.Module):
    def __init__(self, in_ch, out_ch, prev_ch, temb, layers, groups, eps, upsample, attention=None) -> None:
        super().__init__()
        resnets = []
        for i in range(layers):
            skip = in_ch if i == layers - 1 else out_ch
            res_in = prev_ch if i == 0 else out_ch
            resnets.append(ResnetBlock3D(res_in + skip, out_ch, temb, groups, eps))
        self.resnets = nn.ModuleList(resnets)
        if attention is not None:
            heads, cross = attention
            self.attentions = nn.ModuleList(
                [Transformer3DModel(heads, out_ch // heads, out_ch, groups, cross) for _ in range(layers)]
            )
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample3D(out_ch)]) if upsample else None

    def forward(self, x, skips, temb, text, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1]], dim=1)
            skips = skips[:-1]
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, text)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x, upsample_size)
        return x


class MidBlock3D(nn.Module):
    def __init__(self, ch, temb, groups, eps, heads, cross) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(ch, ch, temb, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer3DModel(heads, ch // heads, ch, groups, cross)])

    def forward(self, x, temb, text):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, text)
        return self.resnets[1](x, temb)


class SeineUNet3D(ModelMixin, AttentionMixin, ConfigMixin):
    """SEINE's UNet: [B, 9, F, h, w] latents + mask + masked-video latents, timestep, text [B, 77, D] -> eps."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 9,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        attention_head_dim: int = 8,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
    ) -> None:
        super().__init__()
        heads = attention_head_dim  # SD-1.x's config names the head count 'attention_head_dim'
        channels = list(block_out_channels)
        temb = channels[0] * 4
        self.conv_in = InflatedConv(in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        blocks = len(channels)
        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i in range(blocks):
            inp, out = out, channels[i]
            last = i == blocks - 1
            attention = None if last else (heads, cross_attention_dim)  # SD: 3 cross-attention blocks, then plain
            self.down_blocks.append(
                DownBlock3D(inp, out, temb, layers_per_block, norm_num_groups, norm_eps, not last, downsample_padding, attention)
            )
        self.mid_block = MidBlock3D(channels[-1], temb, norm_num_groups, norm_eps, heads, cross_attention_dim)
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(channels))
        out = reversed_channels[0]
        for i in range(blocks):
            last = i == blocks - 1
            prev, out = out, reversed_channels[i]
            inp = reversed_channels[min(i + 1, blocks - 1)]
            attention = None if i == 0 else (heads, cross_attention_dim)
            self.up_blocks.append(
                UpBlock3D(inp, out, prev, temb, layers_per_block + 1, norm_num_groups, norm_eps, not last, attention)
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_out = InflatedConv(channels[0], out_channels, kernel_size=3, padding=1)

    def disable_forward_chunking(self) -> None:
        for module in self.modules():
            if isinstance(module, BasicTransformerBlock):
                module.set_chunk_feed_forward(None)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.int64, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        text = encoder_hidden_states
        x = self.conv_in(sample)
        skips = (x,)
        for block in self.down_blocks:
            x, states = block(x, emb, text)
            skips += states
        x = self.mid_block(x, emb, text)
        for i, block in enumerate(self.up_blocks):
            last = i == len(self.up_blocks) - 1
            count = len(block.resnets)
            res, skips = skips[-count:], skips[:-count]
            size = skips[-1].shape[2:] if (forward_size and not last) else None
            x = block(x, res, emb, text, size)
        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)
