"""The InstantID identity editor as a package: `editor` (the Editor), `pipeline` (SDXL + IdentityNet +
IP-Adapter img2img), `convert` (the hub repo's pickled IP-Adapter -> safetensors folder) and `faces` (the face
analyzer interface and its InsightFace backend)."""

from .editor import EDITOR, ORDER, InstantIDEditor

__all__ = ["EDITOR", "ORDER", "InstantIDEditor"]
