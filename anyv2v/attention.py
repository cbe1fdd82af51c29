"""Attention as diffusers' AttnProcessor2_0 computes it, optionally a slice of the batch at a time.

Every attention of the I2VGen-XL UNet is independent across dim 0 (spatial blocks: frames; temporal blocks:
pixels), so computing it a slice of rows at a time gives the same values while Q, K, V, the attention output
and its projection exist for one slice only. With `max_tokens=None` it is AttnProcessor2_0's computation, op
for op (a context must have as many rows as the input).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# (input, context, rows) -> (query, key) of those rows, given the whole input and context (same rows):
# lets a plug-in replace Q and K.
QueryKey = Callable[[torch.Tensor, torch.Tensor, slice], "tuple[torch.Tensor, torch.Tensor]"]


def _query_key(attn, inputs: torch.Tensor, context: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    return attn.to_q(inputs[rows]), attn.to_k(context[rows])


def slice_rows(batch: int, length: int, max_tokens: int | None) -> int | None:
    """Rows of dim 0 per slice so a slice holds at most `max_tokens` tokens (a divisor of `batch`); None: all."""
    if max_tokens is None or batch * length <= max_tokens:
        return None
    limit = max(1, max_tokens // max(length, 1))
    best = 1
    for d in range(1, int(batch**0.5) + 1):
        if batch % d == 0:
            for candidate in (d, batch // d):
                if best < candidate <= limit:
                    best = candidate
    return best


def by_row_slices(batch: int, length: int, max_tokens: int | None,
                  compute: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """`compute(rows)` for slices of dim 0 holding at most `max_tokens` tokens each (`slice_rows`), written into
    one output tensor: no list of slices and no concatenated copy. Unsliced: one call over all rows."""
    rows = slice_rows(batch, length, max_tokens) or batch
    if rows == batch:
        return compute(slice(0, batch))
    output = None
    for start in range(0, batch, rows):
        part = slice(start, start + rows)
        part_output = compute(part)
        if output is None:
            output = part_output.new_empty((batch, *part_output.shape[1:]))
        output[part] = part_output
        del part_output
    return output


def attention(
    attn,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
    *,
    query_key: QueryKey | None = None,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """One call of `attn` (a diffusers `Attention`); `query_key` computes Q and K, `max_tokens` slices dim 0.

    A module with an attention of its own (e.g. SEINE's temporal attention: rotary Q/K, a position bias) gives
    it as `attend_with`, which takes the same arguments.
    """
    own = getattr(attn, "attend_with", None)
    if own is not None:
        return own(hidden_states, encoder_hidden_states, attention_mask, temb, query_key=query_key, max_tokens=max_tokens)
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if encoder_hidden_states is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states)
    else:
        context = encoder_hidden_states
    if context.shape[0] != hidden_states.shape[0]:
        # Multi-head attention pairs row i of the input with row i of the context (diffusers' UNets repeat the
        # text per frame); anything else would mix rows.
        raise ValueError(f"the attention context has {context.shape[0]} rows for {hidden_states.shape[0]} input rows")

    def rows_output(part: slice) -> torch.Tensor:
        part_mask = attention_mask
        if attention_mask is not None and attention_mask.shape[0] == hidden_states.shape[0]:
            part_mask = attention_mask[part]
        if query_key is None:
            query, key = _query_key(attn, hidden_states, context, part)
        else:
            query, key = query_key(hidden_states, context, part)
        return _attend(attn, query, key, attn.to_v(context[part]), part_mask)

    hidden_states = by_row_slices(hidden_states.shape[0], hidden_states.shape[1], max_tokens, rows_output)
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def _attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head scaled-dot-product attention and the output projection of (N, L, C) Q/K/V."""
    batch_size = query.shape[0]
    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
    hidden_states = attn.to_out[0](hidden_states)
    return attn.to_out[1](hidden_states)


class SlicedAttnProcessor:
    """A diffusers attention processor computing `max_tokens` tokens' worth of rows at a time (one row when a row
    is longer), with AttnProcessor2_0's values."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        return attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, max_tokens=self.max_tokens)
