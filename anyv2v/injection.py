"""AnyV2V feature injection as a plug-in: attention processors for Q/K and a forward hook for the conv site.

Decoder layers are numbered 0..11 over `unet.up_blocks[0..3]` (3 layers each). The source branch is batch
chunk 0; during an injected step the edit chunks' values at a site are replaced by the source chunk's:
- conv (layer 4 = up_blocks[1].resnets[1]): the residual branch after conv2, before the shortcut is added;
- spatial / temporal self-attention (layers 4..11): Q and K of `attn1` (V and the output stay the edit's).
Both spatial ((B*F, HW, C)) and temporal ((B*HW, F, C)) attention inputs are batch-major, so chunking the
first dimension into branches works for both.

With sequential branches (bounded memory) the source branch runs alone first ("capture": its features at the
sites injected this step are kept in a `SourceFeatures` for that step only), then each edit branch runs alone
("inject": its Q/K/conv features at those sites are replaced by the stored ones). Same values as the batched
path: every layer is independent across the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CONV_LAYERS = (4,)
ATTENTION_LAYERS = tuple(range(4, 12))


@dataclass(frozen=True)
class InjectionSchedule:
    """How many of the first sampling steps inject each kind: k = int(T * tau) over the full T-step schedule."""

    steps: int
    conv: int
    spatial: int
    temporal: int

    @classmethod
    def from_taus(cls, steps: int, tau_conv: float, tau_sa: float, tau_ta: float) -> "InjectionSchedule":
        return cls(steps, int(steps * tau_conv), int(steps * tau_sa), int(steps * tau_ta))

    def at(self, step_index: int) -> "StepInjection":
        return StepInjection(step_index < self.conv, step_index < self.spatial, step_index < self.temporal)

    @property
    def last_step(self) -> int:
        """Index after the last injected step: from here on the source branch is not needed."""
        return max(self.conv, self.spatial, self.temporal)


@dataclass(frozen=True)
class StepInjection:
    conv: bool
    spatial: bool
    temporal: bool

    @property
    def any(self) -> bool:
        return self.conv or self.spatial or self.temporal

    def enabled(self, kind: str) -> bool:
        return getattr(self, kind)


class SourceFeatures:
    """The source branch's features at the sites injected during one sampling step (sequential branches).

    Filled by the "capture" call, read by the "inject" calls of the same step, then dropped with the step.
    """

    def __init__(self, step_index: int) -> None:
        self.step_index = step_index
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def store(self, site: "Site", first: torch.Tensor, second: torch.Tensor | None) -> None:
        self._tensors[site.name] = (first, second)

    def load(self, site: "Site", branches: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if site.name not in self._tensors:
            raise RuntimeError(f"no source features at {site.name} for step {self.step_index}; run the source first")
        first, second = self._tensors[site.name]
        if branches == 1:
            return first, second
        return torch.cat([first] * branches), None if second is None else torch.cat([second] * branches)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self._tensors.values() for t in pair if t is not None)

    def __len__(self) -> int:
        return len(self._tensors)


ROLES = ("batched", "capture", "inject")


@dataclass(frozen=True)
class StepState:
    """What the plug-in needs to know about the UNet call in flight.

    role "batched": the batch holds every branch, the source first when `has_source`; "capture": the source
    branch alone, whose features at this step's injected sites go to `features`; "inject": edit branches
    alone, whose features at those sites come from `features`.
    """

    step_index: int
    branches: int  # batch chunks: [source, (uncond,) cond] or, without the source, [(uncond,) cond]
    has_source: bool
    injection: StepInjection
    role: str = "batched"
    features: SourceFeatures | None = None
    names: tuple[str, ...] = ()  # branch names in batch order, e.g. ("source", "uncond", "cond"), for probes

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} is not one of {ROLES}")
        if self.role != "batched" and self.features is None:
            raise ValueError(f"role {self.role!r} needs the step's SourceFeatures")

    def swap(self, site: "Site", first: torch.Tensor, second: torch.Tensor | None):
        """The (query, key) or (conv feature, None) this call should use at `site`."""
        if not self.injection.enabled(site.kind):
            return first, second
        if self.role == "capture":
            self.features.store(site, first, second)
            return first, second
        if self.role == "inject":
            return self.features.load(site, self.branches)
        if self.has_source:
            return _share_source(first, self.branches), None if second is None else _share_source(second, self.branches)
        return first, second


@dataclass(frozen=True)
class Site:
    name: str  # e.g. "spatial.5" or "conv.4"
    kind: str
    layer: int
    module_path: str  # dotted path inside the UNet


def decoder_layer(unet: torch.nn.Module, layer: int) -> tuple[int, int]:
    """(up block index, layer index inside it) of decoder layer `layer`."""
    per_block = len(unet.up_blocks[0].resnets)
    return layer // per_block, layer % per_block


def injection_sites(unet: torch.nn.Module) -> list[Site]:
    sites = []
    for layer in CONV_LAYERS:
        block, index = decoder_layer(unet, layer)
        sites.append(Site(f"conv.{layer}", "conv", layer, f"up_blocks.{block}.resnets.{index}.conv2"))
    for layer in ATTENTION_LAYERS:
        block, index = decoder_layer(unet, layer)
        sites.append(
            Site(f"spatial.{layer}", "spatial", layer, f"up_blocks.{block}.attentions.{index}.transformer_blocks.0.attn1")
        )
        sites.append(
            Site(
                f"temporal.{layer}", "temporal", layer, f"up_blocks.{block}.temp_attentions.{index}.transformer_blocks.0.attn1"
            )
        )
    return sites


# Called after injection at every site and UNet call, for inspection (tests, debugging):
# attention sites pass (site, state, query, key); the conv site passes (site, state, residual feature, None).
Probe = Callable[[Site, StepState, torch.Tensor, "torch.Tensor | None"], None]


def _share_source(tensor: torch.Tensor, branches: int) -> torch.Tensor:
    """Replace every edit chunk by the source chunk (chunk 0)."""
    source = tensor.chunk(branches, dim=0)[0]
    return torch.cat([source] * branches, dim=0)


class InjectionAttnProcessor:
    """Self-attention that, during injected steps, gives the edit branches the source branch's Q and K.

    Mirrors diffusers' AttnProcessor2_0 otherwise, so an uninjected call computes the same attention.
    """

    def __init__(self, injector: "FeatureInjector", site: Site) -> None:
        self.injector = injector
        self.site = site

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        state = self.injector.state
        if state is not None:
            query, key = state.swap(self.site, query, key)
        if state is not None and self.injector.probe is not None:
            self.injector.probe(self.site, state, query, key)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class FeatureInjector:
    """Installs the injection plug-in on a UNet for the duration of a `with` block.

    Usage:
        with FeatureInjector(unet) as injector:
            with injector.step(StepState(...)):
                unet(...)
    Outside `step` the processors behave as plain attention. On exit (also after an exception) the original
    processors are restored and the hook removed, leaving the UNet as it was.
    """

    def __init__(self, unet: torch.nn.Module, probe: Probe | None = None) -> None:
        self.unet = unet
        self.probe = probe
        self.sites = injection_sites(unet)
        self.state: StepState | None = None
        self._saved_processors: list[tuple[torch.nn.Module, object]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "FeatureInjector":
        try:
            for site in self.sites:
                module = self.unet.get_submodule(site.module_path)
                if site.kind == "conv":
                    self._hooks.append(module.register_forward_hook(self._conv_hook(site)))
                else:
                    self._saved_processors.append((module, module.processor))
                    module.set_processor(InjectionAttnProcessor(self, site))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for module, processor in reversed(self._saved_processors):
            module.set_processor(processor)
        self._saved_processors.clear()
        self.state = None

    @contextlib.contextmanager
    def step(self, state: StepState) -> Iterator[None]:
        """Make `state` the one seen by every site during one UNet call."""
        self.state = state
        try:
            yield
        finally:
            self.state = None

    def _conv_hook(self, site: Site):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            state = self.state
            if state is None:
                return None
            output, _ = state.swap(site, output, None)
            if self.probe is not None:
                self.probe(site, state, output, None)
            return output

        return hook
