"""First-frame editors for AnyV2V: one module (or one package, when an editor needs several files) per editor,
behind one interface (`editors.base.Editor`).

Adding an editor means adding a module or package here that defines `EDITOR = MyEditor()` and `ORDER = <int>`
(a package exports them from its `__init__`); the app's tabs and the CLI (`python -m editors list`) find it
through `available_editors()`. What defines no `EDITOR` is not an editor: the shared helpers `base` (the
interface) and `frames` (frame I/O). Modules only declare their editors at import time; model libraries and
weights load at the first edit.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from .base import Editor, EditorError, EditorInput, ModelCache, quoted

logger = logging.getLogger(__name__)

def available_editors() -> dict[str, Editor]:
    """Every editor in the package by name, in the order of their modules' `ORDER` (then name).

    Every module and package of `editors` whose name does not start with "_" is imported; those that define an
    `EDITOR` are editors. A module that fails to import (for example an editor whose optional dependency is missing) is skipped
    with a warning, so one broken editor does not take the others down.
    """
    found: list[tuple[int, str, Editor]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except ImportError as exc:
            logger.warning("editor module %s skipped: %s", info.name, exc)
            continue
        editor = getattr(module, "EDITOR", None)
        if isinstance(editor, Editor):
            found.append((int(getattr(module, "ORDER", 1000)), editor.name, editor))
    found.sort(key=lambda item: (item[0], item[1]))
    editors: dict[str, Editor] = {}
    for _, name, editor in found:
        if name in editors:
            raise RuntimeError(f"two editor modules define an editor named {name!r}")
        editors[name] = editor
    return editors


def get_editor(name: str) -> Editor:
    """The editor called `name` (case and '-'/'_' insensitive); EditorError listing the valid names otherwise."""
    editors = available_editors()
    key = (name or "").strip().lower().replace("-", "_")
    if key in editors:
        return editors[key]
    raise EditorError(f"unknown editor {quoted(name)}; choose one of: {', '.join(editors)}.")


__all__ = ["Editor", "EditorError", "EditorInput", "ModelCache", "available_editors", "get_editor"]
