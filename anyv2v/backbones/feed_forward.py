"""Chunked feed-forward for our own transformer blocks (SEINE, ConsistI2V), with the `set_chunk_feed_forward`
that diffusers' blocks have, so `anyv2v.memory` bounds their memory the same way."""

from __future__ import annotations

import torch


class FeedForwardChunks:
    """Mixed into an `nn.Module` whose `ff` is its feed-forward; `_feed_forward(x)` runs it whole or a chunk of
    dim-0 rows at a time (the same values: the feed-forward acts on each row alone)."""

    ff: torch.nn.Module
    _chunk_size: int | None = None  # rows of dim 0 per chunk; None: whole

    def set_chunk_feed_forward(self, chunk_size: int | None, dim: int = 0) -> None:
        if dim != 0:
            raise ValueError(f"{type(self).__name__}'s feed-forward is chunked along dim 0 only")
        self._chunk_size = chunk_size

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._chunk_size is None:
            return self.ff(x)
        if x.shape[0] % self._chunk_size:
            raise ValueError(f"feed-forward chunk {self._chunk_size} does not divide {x.shape[0]} rows")
        return torch.cat([self.ff(part) for part in x.split(self._chunk_size)])
