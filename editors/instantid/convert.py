"""InstantID's weights in the form the editor loads: `python -m editors convert-instantid SRC OUT_DIR`.

The hub repo `InstantX/InstantID` holds `ControlNetModel/` (IdentityNet, diffusers format, safetensors) and
`ip-adapter.bin`, a pickle `{"image_proj": Resampler state, "ip_adapter": {"1.to_k_ip.weight", ...}}`. The
converter reads the pickle once with `torch.load(weights_only=True)`, refuses anything but tensors, and writes
`ip-adapter.safetensors` with `image_proj.` / `ip_adapter.` key prefixes, the layout diffusers' core
`load_ip_adapter` reads (the Resampler becomes `IPAdapterPlusImageProjection`). IdentityNet is copied beside it
(config and safetensors only), so OUT_DIR is a complete InstantID folder for `ANYV2V_INSTANTID_MODEL`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from anyv2v.files import atomic_output

from ..base import EditorError, empty_target_dir, load_tensors_only, save_dir_atomically

IP_ADAPTER_PICKLE = "ip-adapter.bin"
IP_ADAPTER_FILE = "ip-adapter.safetensors"
IDENTITYNET_DIR = "ControlNetModel"
SECTIONS = ("image_proj", "ip_adapter")
# Keys every InstantID IP-Adapter has: the Resampler's learned queries and first block, the first processor.
REQUIRED_KEYS = {
    "image_proj": ("latents", "proj_in.weight", "proj_out.weight", "norm_out.weight", "layers.0.0.to_q.weight"),
    "ip_adapter": ("1.to_k_ip.weight", "1.to_v_ip.weight"),
}
# InstantID's Resampler: 4 blocks (diffusers' IPAdapterPlusImageProjection is built with depth 4, so a pack
# with another depth would load wrongly).
RESAMPLER_DEPTH = 4


def read_ip_adapter_pickle(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """`ip-adapter.bin` as {section: {key: tensor}}; EditorError for anything else (never unpickles objects)."""
    path = Path(path)
    if path.is_dir():
        raise EditorError(f"{path} is a folder; give InstantID's ip-adapter.bin file (or the folder that holds it).")
    if not path.is_file():
        raise EditorError(f"{path} does not exist; give InstantID's ip-adapter.bin or the folder that holds it.")
    data = load_tensors_only(path, "InstantID's IP-Adapter", "Use the ip-adapter.bin from InstantX/InstantID.")
    return check_ip_adapter_state(data, str(path))


def check_ip_adapter_state(data: object, where: str) -> dict[str, dict[str, torch.Tensor]]:
    """The state if it is exactly {"image_proj": {str: Tensor}, "ip_adapter": {str: Tensor}} with InstantID's keys."""
    if not isinstance(data, dict) or set(data) != set(SECTIONS):
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise EditorError(f"{where} is not an InstantID IP-Adapter: expected the sections image_proj and ip_adapter, got {keys}.")
    for section in SECTIONS:
        part = data[section]
        if not isinstance(part, dict) or not part:
            raise EditorError(f"{where}: {section} must be a dict of tensors.")
        for key, value in part.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise EditorError(
                    f"{where}: {section}[{key!r}] is a {type(value).__name__}, not a tensor; only tensors are accepted."
                )
        missing = [key for key in REQUIRED_KEYS[section] if key not in part]
        if missing:
            raise EditorError(f"{where}: {section} lacks {', '.join(missing)}; this is not InstantID's IP-Adapter.")
    depth = len({key.split(".")[1] for key in data["image_proj"] if key.startswith("layers.")})
    if depth != RESAMPLER_DEPTH:
        raise EditorError(f"{where}: the Resampler has {depth} blocks; InstantID's has {RESAMPLER_DEPTH}.")
    return data


def flatten_ip_adapter_state(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{"image_proj.<key>": t, "ip_adapter.<key>": t}: the safetensors layout of diffusers' `load_ip_adapter`."""
    return {
        f"{section}.{key}": value.detach().to("cpu").contiguous().clone()
        for section in SECTIONS
        for key, value in state[section].items()
    }


def write_ip_adapter_safetensors(state: dict[str, dict[str, torch.Tensor]], path: str | os.PathLike) -> Path:
    """Write the IP-Adapter as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_output(path, overwrite=False) as tmp:
        save_file(flatten_ip_adapter_state(state), tmp, metadata={"format": "pt", "source": "InstantID ip-adapter.bin"})
    return path


def _sources(src: Path) -> tuple[Path, Path]:
    """(ip-adapter.bin, ControlNetModel folder) from a downloaded InstantX/InstantID folder or the .bin inside it."""
    if src.is_dir():
        pickle_path, identitynet = src / IP_ADAPTER_PICKLE, src / IDENTITYNET_DIR
    elif src.is_file():
        pickle_path, identitynet = src, src.parent / IDENTITYNET_DIR
    else:
        raise EditorError(f"{src} does not exist; give the folder downloaded from InstantX/InstantID.")
    if pickle_path.is_dir():
        raise EditorError(f"{pickle_path} is a folder; it must be the ip-adapter.bin file from InstantX/InstantID.")
    if not pickle_path.is_file():
        raise EditorError(f"{pickle_path} not found; download ip-adapter.bin from InstantX/InstantID into {src}.")
    config = identitynet / "config.json"
    weights = identitynet / "diffusion_pytorch_model.safetensors"
    if not config.is_file() or not weights.is_file():
        raise EditorError(
            f"IdentityNet not found: {identitynet} must hold config.json and diffusion_pytorch_model.safetensors "
            "(download ControlNetModel/ from InstantX/InstantID beside ip-adapter.bin)."
        )
    return pickle_path, identitynet


def convert_instantid(src: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a downloaded InstantX/InstantID (SRC: its folder or its ip-adapter.bin) into OUT_DIR:
    `ip-adapter.safetensors` + `ControlNetModel/`. OUT_DIR must be new or empty; it appears complete or not at all."""
    pickle_path, identitynet = _sources(Path(src).expanduser())
    out = empty_target_dir(out_dir, "the converted InstantID model")
    state = read_ip_adapter_pickle(pickle_path)

    def save(tmp: Path) -> None:
        write_ip_adapter_safetensors(state, tmp / IP_ADAPTER_FILE)
        (tmp / IDENTITYNET_DIR).mkdir()
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            shutil.copyfile(identitynet / name, tmp / IDENTITYNET_DIR / name)

    return save_dir_atomically(out, save)


def check_instantid_folder(folder: str | os.PathLike) -> str | None:
    """What is missing from a converted InstantID folder, with how to make it; None when complete. Cheap."""
    path = Path(folder).expanduser()
    how = (
        "Download InstantX/InstantID (ControlNetModel/ and ip-adapter.bin), e.g. `hf download InstantX/InstantID "
        "--local-dir instantid-src`, then run `python -m editors convert-instantid instantid-src "
        f"{path}`."
    )
    if not path.is_dir():
        return f"the converted InstantID folder {path} does not exist. {how}"
    missing = []
    if not (path / IP_ADAPTER_FILE).is_file():
        if (path / IP_ADAPTER_PICKLE).is_file():
            return (
                f"{path} holds ip-adapter.bin (a pickle), which the editor does not load; convert it once with "
                f"`python -m editors convert-instantid {path} NEW_FOLDER` and use NEW_FOLDER."
            )
        missing.append(IP_ADAPTER_FILE)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        if not (path / IDENTITYNET_DIR / name).is_file():
            missing.append(f"{IDENTITYNET_DIR}/{name}")
    if missing:
        return f"{path} lacks {', '.join(missing)}. {how}"
    return None


def random_instantid_ip_adapter(
    cross_attention_hidden_sizes: list[int],
    output_dims: int,
    hidden_dims: int = 1280,
    heads: int = 20,
    num_queries: int = 16,
    embedding_dims: int = 512,
    ff_mult: int = 4,
    generator: torch.Generator | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights in `ip-adapter.bin`'s own layout (InstantID's Resampler key names; for tiny test models).

    `cross_attention_hidden_sizes`: the hidden size of each cross-attention layer of the UNet in
    `unet.attn_processors` order; they get the odd processor ids 1, 3, 5, ... as in InstantID.
    Defaults are InstantID's Resampler (dim 1280, depth 4, 20 heads of 64, 16 queries, 512-d input).
    """

    def rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    inner = 64 * heads
    proj: dict[str, torch.Tensor] = {
        "latents": rand(1, num_queries, hidden_dims, scale=hidden_dims**-0.5),
        "proj_in.weight": rand(hidden_dims, embedding_dims),
        "proj_in.bias": rand(hidden_dims),
        "proj_out.weight": rand(output_dims, hidden_dims),
        "proj_out.bias": rand(output_dims),
        "norm_out.weight": 1 + rand(output_dims),
        "norm_out.bias": rand(output_dims),
    }
    for i in range(RESAMPLER_DEPTH):
        block = f"layers.{i}"
        proj.update(
            {
                f"{block}.0.norm1.weight": 1 + rand(hidden_dims),
                f"{block}.0.norm1.bias": rand(hidden_dims),
                f"{block}.0.norm2.weight": 1 + rand(hidden_dims),
                f"{block}.0.norm2.bias": rand(hidden_dims),
                f"{block}.0.to_q.weight": rand(inner, hidden_dims),
                f"{block}.0.to_kv.weight": rand(2 * inner, hidden_dims),
                f"{block}.0.to_out.weight": rand(hidden_dims, inner),
                f"{block}.1.0.weight": 1 + rand(hidden_dims),
                f"{block}.1.0.bias": rand(hidden_dims),
                f"{block}.1.1.weight": rand(hidden_dims * ff_mult, hidden_dims),
                f"{block}.1.3.weight": rand(hidden_dims, hidden_dims * ff_mult),
            }
        )
    adapter: dict[str, torch.Tensor] = {}
    for n, hidden_size in enumerate(cross_attention_hidden_sizes):
        key_id = 2 * n + 1
        adapter[f"{key_id}.to_k_ip.weight"] = rand(hidden_size, output_dims)
        adapter[f"{key_id}.to_v_ip.weight"] = rand(hidden_size, output_dims)
    return {"image_proj": proj, "ip_adapter": adapter}


def cross_attention_hidden_sizes(unet: torch.nn.Module) -> list[int]:
    """Hidden size of each cross-attention (attn2) layer of a UNet2DConditionModel, in attn_processors order."""
    sizes = []
    blocks = list(unet.config.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(blocks[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(blocks))[int(name[len("up_blocks.")])])
        else:
            sizes.append(blocks[int(name[len("down_blocks.")])])
    return sizes
