"""The API's first-frame parameters: the union of every editor's declared inputs, one /edit_first_frame
parameter per input name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from editors.base import Editor, EditorInput

# /edit_first_frame's own parameters; an editor input with one of these names is renamed "<editor>_<name>".
FIRST_FRAME_API_PARAMS = ("video", "editor", "candidates", "width", "height", "resize_mode", "fps", "start_time")


@dataclass
class ApiEditorParam:
    """One /edit_first_frame parameter standing for the same-named input of one or more editors."""

    name: str
    spec: EditorInput
    default: Any
    targets: dict[str, str]  # editor name -> that editor's input name


def api_editor_params(available: Mapping[str, "Editor"]) -> list[ApiEditorParam]:
    """The union of every editor's inputs by name; a clash of kinds or with the endpoint's own parameters gets
    the name `<editor>_<input>`, and a shared default is None when the editors disagree."""
    params: dict[str, ApiEditorParam] = {}
    for editor in available.values():
        for spec in editor.inputs:
            name = spec.name
            existing = params.get(name)
            if name in FIRST_FRAME_API_PARAMS or (existing is not None and existing.spec.kind != spec.kind):
                name = f"{editor.name}_{spec.name}"
                existing = params.get(name)
            if existing is None:
                params[name] = ApiEditorParam(name, spec, spec.default, {editor.name: spec.name})
            else:
                existing.targets[editor.name] = spec.name
                if existing.default != spec.default:
                    existing.default = None
    return list(params.values())


def editor_values(editor: "Editor", params: Sequence[ApiEditorParam], given: Mapping[str, Any]) -> dict[str, Any]:
    return {p.targets[editor.name]: given.get(p.name) for p in params if editor.name in p.targets}
