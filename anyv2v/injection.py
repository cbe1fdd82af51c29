"""AnyV2V feature injection as a plug-in: attention processors for Q/K and a forward hook for the conv site.

Decoder layers are numbered 0..11 over `unet.up_blocks[0..3]` (3 layers each). The source branch is batch
chunk 0; during an injected step the edit chunks' values at a site are replaced by the source chunk's:
- conv (layer 4 = up_blocks[1].resnets[1]): the residual branch after conv2, before the shortcut is added;
- spatial / temporal self-attention (layers 4..11): Q and K of `attn1` (V and the output stay the edit's).
Both spatial ((B*F, HW, C)) and temporal ((B*HW, F, C)) attention inputs are batch-major, so chunking the
first dimension into branches works for both.

With sequential branches (bounded memory) the source branch runs alone first ("capture": its features at the
sites injected this step are kept in a `SourceFeatures` for that step only: the conv feature, and the
self-attention input from which its Q and K are computed again), then each edit branch runs alone ("inject":
its Q/K/conv features at those sites are replaced by the source's). Same values as the batched path: every
layer is independent across the batch. There the attention may also run a slice of rows at a time
(`max_tokens`, see `anyv2v.attention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .attention import attention

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
    """The source branch's features at the sites injected during one sampling step (sequential branches):
    the conv feature at conv sites, the self-attention input (Q and K are computed from it) at attention sites.

    Filled by the "capture" call, read by the "inject" calls of the same step, then dropped with the step.
    """

    def __init__(self, step_index: int) -> None:
        self.step_index = step_index
        self._tensors: dict[str, torch.Tensor] = {}

    def store(self, site: "Site", tensor: torch.Tensor) -> None:
        self._tensors[site.name] = tensor

    def load(self, site: "Site", branches: int) -> torch.Tensor:
        if site.name not in self._tensors:
            raise RuntimeError(f"no source features at {site.name} for step {self.step_index}; run the source first")
        tensor = self._tensors[site.name]
        if branches == 1:
            return tensor
        if isinstance(tensor, tuple):
            return tuple(torch.cat([t] * branches) for t in tensor)
        return torch.cat([tensor] * branches)

    @property
    def nbytes(self) -> int:
        flat = [t for v in self._tensors.values() for t in (v if isinstance(v, tuple) else (v,))]
        return sum(t.numel() * t.element_size() for t in flat)

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

    def swap(self, site: "Site", feature: torch.Tensor) -> torch.Tensor:
        """The conv feature this call should use at `site` (the residual branch after conv2)."""
        if not self.injection.enabled(site.kind):
            return feature
        if self.role == "capture":
            self.features.store(site, feature)
            return feature
        if self.role == "inject":
            return self.features.load(site, self.branches)
        return _share_source(feature, self.branches) if self.shares_source(site) else feature

    def shares_source(self, site: "Site") -> bool:
        """A batched call whose edit chunks take the source chunk's features at `site` this step."""
        return self.role == "batched" and self.has_source and self.injection.enabled(site.kind)

    def query_key(
        self, site: "Site", attn, inputs: torch.Tensor, context: torch.Tensor, rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (query, key) of `rows` at the self-attention `site`, whose input and context are `inputs` and
        `context` (all rows; the same tensor for self-attention).

        The source branch's Q and K are functions of its attention input, so "capture" keeps that input (one
        tensor instead of two) and "inject" computes the source's Q and K from it, rows for rows, with the
        same projections: the same values the capture call used.
        """
        enabled = self.injection.enabled(site.kind)
        if enabled and self.role == "inject":
            source = self.features.load(site, self.branches)  # the sampler's inject calls have 1 branch
            if isinstance(source, tuple):  # a context other than the input (ConsistI2V's first-frame keys)
                return attn.to_q(source[0][rows]), attn.to_k(source[1][rows])
            return attn.to_q(source[rows]), attn.to_k(source[rows])
        if enabled and self.role == "capture":
            self.features.store(site, inputs if context is inputs else (inputs, context))
        query, key = attn.to_q(inputs[rows]), attn.to_k(context[rows])
        if self.shares_source(site):
            return _share_source(query, self.branches), _share_source(key, self.branches)
        return query, key


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


def injection_sites(unet: torch.nn.Module, paths: dict[str, str] | None = None) -> list[Site]:
    """The conv site (decoder layer 4) and the spatial/temporal self-attention sites (layers 4..11); `paths`
    says where each kind sits in an up block, {i} the layer's index in it (a backbone's `SITE_PATHS`; default
    I2VGen-XL's)."""
    if paths is None:
        from .backbones.i2vgen_xl import SITE_PATHS as paths
    sites = []
    for layer in CONV_LAYERS:
        block, index = decoder_layer(unet, layer)
        sites.append(Site(f"conv.{layer}", "conv", layer, f"up_blocks.{block}." + paths["conv"].format(i=index)))
    for layer in ATTENTION_LAYERS:
        block, index = decoder_layer(unet, layer)
        for kind in ("spatial", "temporal"):
            sites.append(Site(f"{kind}.{layer}", kind, layer, f"up_blocks.{block}." + paths[kind].format(i=index)))
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

    Otherwise it is diffusers' AttnProcessor2_0 (`anyv2v.attention.attention`), so an uninjected call computes
    the same attention; with the injector's `max_tokens` (bounded memory, not the batched path) it computes a
    slice of rows at a time.
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
        state = self.injector.state
        if state is None:  # outside a sampling step: plain attention
            return attention(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, max_tokens=self.injector.max_tokens
            )
        probe = self.injector.probe
        # A batched call that shares the source chunk needs whole Q/K tensors: it is not sliced.
        max_tokens = None if state.shares_source(self.site) else self.injector.max_tokens
        probed: list[tuple[torch.Tensor, torch.Tensor]] = []

        def query_key(inputs: torch.Tensor, context: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            query, key = state.query_key(self.site, attn, inputs, context, rows)
            if probe is not None:
                probed.append((query, key))
            return query, key

        output = attention(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, query_key=query_key, max_tokens=max_tokens
        )
        if probed:
            queries, keys = zip(*probed)
            probe(self.site, state, torch.cat(queries), torch.cat(keys))
        return output


class FeatureInjector:
    """Installs the injection plug-in on a UNet for the duration of a `with` block.

    Usage:
        with FeatureInjector(unet) as injector:
            with injector.step(StepState(...)):
                unet(...)
    Outside `step` the processors behave as plain attention. On exit (also after an exception) the original
    processors are restored and the hook removed, leaving the UNet as it was.
    """

    def __init__(
        self, unet: torch.nn.Module, probe: Probe | None = None, max_tokens: int | None = None,
        sites: list[Site] | None = None,
    ) -> None:
        self.unet = unet
        self.probe = probe
        self.max_tokens = max_tokens  # attention slices of at most this many tokens (sequential branches only)
        self.sites = sites if sites is not None else injection_sites(unet)  # default: I2VGen-XL's layout
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
                    if module.is_cross_attention:
                        raise ValueError(f"{site.module_path} is a cross-attention; Q/K injection needs self-attention")
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
            output = state.swap(site, output)
            if self.probe is not None:
                self.probe(site, state, output, None)
            return output

        return hook
