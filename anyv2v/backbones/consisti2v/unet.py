"""ConsistI2V's video UNet (Ren et al. 2024, `TIGER-Lab/ConsistI2V`), as AnyV2V's official `consisti2v/` code
computes it (`VideoLDMUNet3DConditionModel`), written for this project on current diffusers building blocks.

Layout: Stable Diffusion 2.1's 2-D UNet run on every frame ((B F) C H W), with after every 2-D ResNet a temporal
ResNet (`conv3ds`: GroupNorm per frame, a (3, 1, 1) convolution over frames, a learned blend `alpha` with its
input) and after every spatial transformer a temporal transformer (`tempo_attns`, also blended by `alpha`). The mid
block has temporal ResNets but no temporal transformer.

First-frame conditioning ("concat" mode, the released model's): the UNet denoises frames 1..F-1 and receives the
first frame's clean latent separately; it is prepended along frames, the network runs on F frames and frame 0 of
the output is dropped. Inside:
- spatial self-attention (`attn1` of the spatial transformers) takes its keys and values from the frame's own
  tokens followed by the first frame's tokens (queries from the frame only);
- temporal self-attention (`attn1` of the temporal transformers, over the frame axis of each pixel) also attends
  to the 8 neighbours of that pixel in the first frame (its 3x3 window without the centre, edges replicated);
  rotary position embeddings rotate the first half of the **full** inner dimension (before the head split) of
  the queries (positions 0..F-1) and of the keys (frames 0..F-1, the 8 neighbours at position 0);
- temporal cross-attention (`attn2` of the temporal transformers) attends to the text: its queries are rotated,
  its keys (text tokens) are not;
- `frame_stride` goes through the timestep projection and its own embedding MLP, added to the time embedding.

Parameter names equal the official model's state dict (so the hub folder's unet/ loads as it is); modules the
official model holds but does not use in this configuration (the temporal ResNets' `time_emb_proj`, the temporal
attentions' `rotary_bias`) are kept for that reason. diffusers' `ResnetBlock2D`, `Downsample2D`, `Upsample2D`,
`Attention` (spatial self- and cross-attention), `FeedForward`, `Timesteps` and `TimestepEmbedding` compute the
same as the reference's; the temporal ResNet, the transformers and the temporal attention are our own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from ..feed_forward import FeedForwardChunks

ROTARY_THETA = 10000.0
TEMPORAL_RESNET_GROUPS = 32  # the official TemporalResnetBlock keeps its class default (not norm_num_groups)
# The 3x3 first-frame window of a pixel, without the pixel itself (row-major order, as the reference's mask).
NEIGHBOURS = [0, 1, 2, 3, 5, 6, 7, 8]
# The configuration the released model runs with; the reference's other modes are not implemented here.
SUPPORTED = {
    "first_frame_condition_mode": "concat",
    "temp_pos_embedding": "rotary",
    "use_temporal": True,
    "augment_temporal_attention": True,
}


class TemporalResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv over frames, twice, plus the input; then alpha * input + (1 - alpha) * that."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(TEMPORAL_RESNET_GROUPS, channels, eps=1e-6, affine=True)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = nn.Linear(512, channels)  # in the official model, never called (no temb is passed)
        self.norm2 = nn.GroupNorm(TEMPORAL_RESNET_GROUPS, channels, eps=1e-6, affine=True)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.alpha = nn.Parameter(torch.ones(1))

    def _conv(self, conv: nn.Conv3d, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        y = conv(x.reshape(bf // frames, frames, c, h, w).transpose(1, 2))
        return y.transpose(1, 2).reshape(bf, -1, h, w)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        h = self._conv(self.conv1, F.silu(self.norm1(x)), frames)
        h = self._conv(self.conv2, F.silu(self.norm2(h)), frames)
        alpha = self.alpha.clamp(0, 1)  # the reference clamps the parameter in place before using it
        return alpha * x + (1 - alpha) * (x + h)


class RotaryEmbedding(nn.Module):
    """Rotary embedding of `dims` channels (interleaved pairs), positions given per token; `freqs` is a
    parameter in the official state dict (1 / theta^(2i/dims))."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        freqs = 1.0 / (ROTARY_THETA ** (torch.arange(0, dims, 2)[: dims // 2].float() / dims))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [..., L, D]; positions: [L]. The first 2 * len(freqs) channels rotate, the rest pass."""
        # angles in float32 whatever the model's dtype (the official code computes them in the weights' dtype)
        freqs = self.freqs.float()
        angles = (positions.float()[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1).to(x)
        dims = angles.shape[-1]
        part, rest = x[..., :dims], x[..., dims:]
        pairs = part.reshape(*part.shape[:-1], dims // 2, 2)
        half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(part.shape)
        return torch.cat((part * angles.cos() + half * angles.sin(), rest), dim=-1)


class RelativePositionBias(nn.Module):
    """Held by the official temporal attention (in its state dict) but not used by its rotary processor."""

    def __init__(self, heads: int, num_buckets: int = 32) -> None:
        super().__init__()
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)


class TemporalAttention(Attention):
    """Attention over the frame axis ([(B HW), F, C] rows) with rotary positions on the full inner dimension.

    As self-attention (`attn1`) its context may be the frames followed by first-frame neighbours (keys at
    positions 0..F-1 then 0); as cross-attention (`attn2`) the context is the text, whose keys are not rotated.
    `attend_with` is what `anyv2v.attention.attention` calls for it, so the injection plug-in (Q/K before the
    rotation, as the reference injects them) and row slicing work on it as on any self-attention.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None) -> None:
        super().__init__(
            query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head, bias=False,
            processor=TemporalAttnProcessor(),
        )
        self.rotary_bias = RelativePositionBias(heads)
        self.rotary_emb = RotaryEmbedding(self.inner_dim // 2)

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
        from ...attention import by_row_slices

        if attention_mask is not None:
            raise ValueError("ConsistI2V's temporal attention takes no mask")
        x = hidden_states
        context = x if encoder_hidden_states is None else encoder_hidden_states
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"the attention context has {context.shape[0]} rows for {x.shape[0]} input rows")
        qlen, klen = x.shape[1], context.shape[1]
        q_pos = torch.arange(qlen, device=x.device, dtype=torch.float32)
        if klen == qlen:
            k_pos = q_pos
        elif not self.is_cross_attention:  # frames, then first-frame neighbours at position 0
            k_pos = torch.cat([q_pos, torch.zeros(klen - qlen, device=x.device, dtype=torch.float32)])
        else:  # text keys: not rotated
            k_pos = None

        def rows_output(part: slice) -> torch.Tensor:
            if query_key is None:
                query, key = self.to_q(x[part]), self.to_k(context[part])
            else:
                query, key = query_key(x, context, part)
            query = self.rotary_emb.rotate(query, q_pos)
            if k_pos is not None:
                key = self.rotary_emb.rotate(key, k_pos)
            return self._attend(query, key, self.to_v(context[part]))

        return by_row_slices(x.shape[0], qlen, max_tokens, rows_output)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        n = query.shape[0]
        dh = key.shape[-1] // self.heads
        q = query.view(n, -1, self.heads, dh).transpose(1, 2)
        k = key.view(n, -1, self.heads, dh).transpose(1, 2)
        v = value.view(n, -1, self.heads, dh).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
        out = out.transpose(1, 2).reshape(n, -1, self.heads * dh).to(query.dtype)
        return self.to_out[1](self.to_out[0](out))


class TemporalAttnProcessor:
    """The default processor of `TemporalAttention` (plain: no injection, no slicing); `sliceable`: the bounded
    memory option may swap it for a slicing processor that calls `attend_with` with a token budget."""

    sliceable = True

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        return attn.attend_with(hidden_states, encoder_hidden_states, attention_mask, temb)


class TransformerBlock(FeedForwardChunks, nn.Module):
    """Self-attention (with first-frame context), cross-attention to the text, GEGLU feed-forward; pre-norm,
    residual. Spatial blocks attend over the tokens of a frame, temporal blocks over the frames of a pixel."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        if temporal:
            self.attn1 = TemporalAttention(dim, heads, dim_head)
            self.attn2 = TemporalAttention(dim, heads, dim_head, cross_attention_dim)
        else:
            self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim_head, bias=False, processor=AttnProcessor2_0())
            self.attn2 = Attention(
                query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head, bias=False,
                processor=AttnProcessor2_0(),
            )
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, text: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        if self.temporal:
            return self._temporal(x, text, frames, height, width)
        # x: [(B F), HW, C]; text: [(B F), L, D]
        normed = self.norm1(x)
        bf, hw, c = normed.shape
        first = normed.reshape(bf // frames, frames, hw, c)[:, :1].expand(-1, frames, -1, -1).reshape(bf, hw, c)
        x = self.attn1(normed, encoder_hidden_states=torch.cat([normed, first], dim=1)) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=text) + x
        return self._feed_forward(self.norm3(x)) + x

    def _temporal(self, x: torch.Tensor, text: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        bf, hw, c = x.shape
        b = bf // frames

        def to_rows(t: torch.Tensor) -> torch.Tensor:  # [(B F), HW, C] -> [(B HW), F, C]
            return t.reshape(b, frames, hw, c).transpose(1, 2).reshape(b * hw, frames, c)

        def from_rows(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, hw, frames, c).transpose(1, 2).reshape(bf, hw, c)

        normed = self.norm1(x)
        first = normed.reshape(b, frames, hw, c)[:, 0].reshape(b, height, width, c).permute(0, 3, 1, 2)
        windows = F.pad(first, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)  # [b, c, h, w, 3, 3]
        neighbours = windows.flatten(-2)[..., NEIGHBOURS]  # [b, c, h, w, 8]
        neighbours = neighbours.permute(0, 2, 3, 4, 1).reshape(b * hw, -1, c)
        rows = to_rows(normed)
        x = from_rows(self.attn1(rows, encoder_hidden_states=torch.cat([rows, neighbours], dim=1))) + x
        # cross-attention: each pixel's frames attend to the text of its clip
        context = text[::frames].repeat_interleave(hw, dim=0)
        x = from_rows(self.attn2(to_rows(self.norm2(x)), encoder_hidden_states=context)) + x
        return self._feed_forward(self.norm3(x)) + x


class Transformer(nn.Module):
    """GroupNorm + projection in, one transformer block, projection out, residual; temporal ones then blend with
    their input by `alpha`."""

    def __init__(
        self, heads: int, dim_head: int, channels: int, groups: int, cross_attention_dim: int, linear: bool,
        temporal: bool,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, dim_head, cross_attention_dim, temporal)])
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, kernel_size=1)
        self.alpha = nn.Parameter(torch.ones(1)) if temporal else None

    def forward(self, x: torch.Tensor, text: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        y = self.norm(x)
        if self.linear:
            y = self.proj_in(y.permute(0, 2, 3, 1).reshape(bf, h * w, c))
        else:
            y = self.proj_in(y)
            y = y.permute(0, 2, 3, 1).reshape(bf, h * w, y.shape[1])
        inner = y.shape[-1]
        for block in self.transformer_blocks:
            y = block(y, text, frames, h, w)
        if self.linear:
            y = self.proj_out(y).reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
        else:
            y = self.proj_out(y.reshape(bf, h, w, inner).permute(0, 3, 1, 2).contiguous())
        out = y + x
        if self.alpha is not None:
            alpha = self.alpha.clamp(0, 1)
            out = alpha * x + (1 - alpha) * out
        return out


class _Options:
    """What every block needs from the UNet config."""

    def __init__(self, temb: int, groups: int, eps: float, cross: int, linear: bool, temp_heads: int) -> None:
        self.temb, self.groups, self.eps = temb, groups, eps
        self.cross, self.linear, self.temp_heads = cross, linear, temp_heads

    def resnet(self, in_ch: int, out_ch: int) -> ResnetBlock2D:
        return ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=self.temb, eps=self.eps, groups=self.groups)

    def spatial(self, ch: int, heads: int) -> Transformer:
        return Transformer(heads, ch // heads, ch, self.groups, self.cross, self.linear, temporal=False)

    def temporal(self, ch: int) -> Transformer:
        return Transformer(self.temp_heads, ch // self.temp_heads, ch, self.groups, self.cross, self.linear, temporal=True)


class DownBlock(nn.Module):
    def __init__(self, opts: _Options, in_ch: int, out_ch: int, layers: int, downsample: bool, padding: int, heads: int | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([opts.resnet(in_ch if i == 0 else out_ch, out_ch) for i in range(layers)])
        self.conv3ds = nn.ModuleList([TemporalResnetBlock(out_ch) for _ in range(layers)])
        if heads is not None:
            self.attentions = nn.ModuleList([opts.spatial(out_ch, heads) for _ in range(layers)])
            self.tempo_attns = nn.ModuleList([opts.temporal(out_ch) for _ in range(layers)])
        else:
            self.attentions = self.tempo_attns = None
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_ch, use_conv=True, out_channels=out_ch, padding=padding, name="op")])
            if downsample else None
        )

    def forward(self, x, temb, text, frames):
        states = ()
        for i, resnet in enumerate(self.resnets):
            x = self.conv3ds[i](resnet(x, temb), frames)
            if self.attentions is not None:
                x = self.tempo_attns[i](self.attentions[i](x, text, frames), text, frames)
            states += (x,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                x = down(x)
            states += (x,)
        return x, states


class UpBlock(nn.Module):
    def __init__(self, opts: _Options, in_ch: int, out_ch: int, prev_ch: int, layers: int, upsample: bool, heads: int | None) -> None:
        super().__init__()
        resnets = []
        for i in range(layers):
            skip = in_ch if i == layers - 1 else out_ch
            resnets.append(opts.resnet((prev_ch if i == 0 else out_ch) + skip, out_ch))
        self.resnets = nn.ModuleList(resnets)
        self.conv3ds = nn.ModuleList([TemporalResnetBlock(out_ch) for _ in range(layers)])
        if heads is not None:
            self.attentions = nn.ModuleList([opts.spatial(out_ch, heads) for _ in range(layers)])
            self.tempo_attns = nn.ModuleList([opts.temporal(out_ch) for _ in range(layers)])
        else:
            self.attentions = self.tempo_attns = None
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch, use_conv=True, out_channels=out_ch)]) if upsample else None

    def forward(self, x, skips, temb, text, frames, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1]], dim=1)
            skips = skips[:-1]
            x = self.conv3ds[i](resnet(x, temb), frames)
            if self.attentions is not None:
                x = self.tempo_attns[i](self.attentions[i](x, text, frames), text, frames)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x, upsample_size)
        return x


class MidBlock(nn.Module):
    def __init__(self, opts: _Options, ch: int, heads: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([opts.resnet(ch, ch) for _ in range(2)])
        self.conv3ds = nn.ModuleList([TemporalResnetBlock(ch) for _ in range(2)])
        self.attentions = nn.ModuleList([opts.spatial(ch, heads)])

    def forward(self, x, temb, text, frames):
        x = self.conv3ds[0](self.resnets[0](x, temb), frames)
        x = self.attentions[0](x, text, frames)
        return self.conv3ds[1](self.resnets[1](x, temb), frames)


def _per_block(value, blocks: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * blocks
    if len(values) != blocks:
        raise ValueError(f"{name} has {len(values)} entries for {blocks} blocks")
    return values


class ConsistI2VUNet(ModelMixin, AttentionMixin, ConfigMixin):
    """ConsistI2V's UNet: latents of frames 1..F-1 [B, 4, F-1, h, w], timestep, text [B, L, D], the first frame's
    latent [B, 4, 1, h, w] and the frame stride -> eps of frames 1..F-1.

    The config is the official `unet/config.json` (SD-2.1 names: `attention_head_dim` is the head count per block;
    the ConsistI2V additions `n_temp_heads`, `first_frame_condition_mode`, ...). `n_frames` is read but the frame
    count comes from the input (the official model reshapes with `n_frames`, so it must equal the clip length)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        attention_head_dim=8,
        use_linear_projection: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        use_temporal: bool = True,
        n_frames: int = 8,
        n_temp_heads: int = 8,
        first_frame_condition_mode: str = "none",
        augment_temporal_attention: bool = False,
        temp_pos_embedding: str = "sinusoidal",
        use_frame_stride_condition: bool = False,
    ) -> None:
        super().__init__()
        given = {
            "first_frame_condition_mode": first_frame_condition_mode, "temp_pos_embedding": temp_pos_embedding,
            "use_temporal": use_temporal, "augment_temporal_attention": augment_temporal_attention,
        }
        for key, value in given.items():
            if value != SUPPORTED[key]:
                raise ValueError(f"{key}={value!r} is not supported (only the released model's {SUPPORTED[key]!r})")
        blocks = len(block_out_channels)
        attention_blocks = {"CrossAttnDownBlock2D", "CrossAttnUpBlock2D"}
        for kind in list(down_block_types) + list(up_block_types):
            if kind not in attention_blocks | {"DownBlock2D", "UpBlock2D"}:
                raise ValueError(f"block type {kind!r} is not supported")
        heads = _per_block(attention_head_dim, blocks, "attention_head_dim")
        channels = list(block_out_channels)
        temb = channels[0] * 4
        opts = _Options(temb, norm_num_groups, norm_eps, cross_attention_dim, use_linear_projection, n_temp_heads)
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], temb)
        self.frame_stride_embedding = TimestepEmbedding(channels[0], temb) if use_frame_stride_condition else None
        self.down_blocks = nn.ModuleList()
        out = channels[0]
        for i, kind in enumerate(down_block_types):
            inp, out = out, channels[i]
            with_attention = heads[i] if kind in attention_blocks else None
            self.down_blocks.append(
                DownBlock(opts, inp, out, layers_per_block, i < blocks - 1, downsample_padding, with_attention)
            )
        self.mid_block = MidBlock(opts, channels[-1], heads[-1])
        self.up_blocks = nn.ModuleList()
        reversed_channels, reversed_heads = list(reversed(channels)), list(reversed(heads))
        out = reversed_channels[0]
        for i, kind in enumerate(up_block_types):
            prev, out = out, reversed_channels[i]
            inp = reversed_channels[min(i + 1, blocks - 1)]
            with_attention = reversed_heads[i] if kind in attention_blocks else None
            self.up_blocks.append(UpBlock(opts, inp, out, prev, layers_per_block + 1, i < blocks - 1, with_attention))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(channels[0], out_channels, kernel_size=3, padding=1)

    def disable_forward_chunking(self) -> None:
        for module in self.modules():
            if isinstance(module, TransformerBlock):
                module.set_chunk_feed_forward(None)

    def _embed(self, value, batch: int, device) -> torch.Tensor:
        if not torch.is_tensor(value):
            value = torch.tensor([value], dtype=torch.int64, device=device)
        elif value.ndim == 0:
            value = value[None].to(device)
        return self.time_proj(value.to(device).expand(batch)).to(dtype=self.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        first_frame_latents: torch.Tensor,
        frame_stride=3,
    ) -> torch.Tensor:
        if sample.ndim != 5 or first_frame_latents.ndim != 5 or first_frame_latents.shape[2] != 1:
            raise ValueError("sample must be [B, C, F-1, h, w] and first_frame_latents [B, C, 1, h, w]")
        video = torch.cat([first_frame_latents.to(sample), sample], dim=2)
        b, _, frames, h, w = video.shape
        x = video.transpose(1, 2).reshape(b * frames, -1, h, w)
        text = encoder_hidden_states.repeat_interleave(frames, dim=0)  # [(B F), L, D]
        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % up_factor != 0 for s in (h, w))
        emb = self.time_embedding(self._embed(timestep, b * frames, x.device))
        if self.frame_stride_embedding is not None:
            emb = emb + self.frame_stride_embedding(self._embed(frame_stride, b * frames, x.device))
        x = self.conv_in(x)
        skips = (x,)
        for block in self.down_blocks:
            x, states = block(x, emb, text, frames)
            skips += states
        x = self.mid_block(x, emb, text, frames)
        for i, block in enumerate(self.up_blocks):
            last = i == len(self.up_blocks) - 1
            count = len(block.resnets)
            res, skips = skips[-count:], skips[:-count]
            size = skips[-1].shape[2:] if (forward_size and not last) else None
            x = block(x, res, emb, text, frames, size)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        out = x.reshape(b, frames, *x.shape[1:]).transpose(1, 2)
        return out[:, :, 1:]
