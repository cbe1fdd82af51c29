"""The AnyDoor subject editor as a package: `editor` (the Editor), `pipeline` (our diffusers port of the model),
`preprocess` (the official collage, hint and paste-back, in OpenCV), `convert` (official checkpoint -> safetensors
folder) and `masks` (rembg subject masks from a local model file)."""

from .editor import EDITOR, ORDER, AnyDoorEditor

__all__ = ["EDITOR", "ORDER", "AnyDoorEditor"]
