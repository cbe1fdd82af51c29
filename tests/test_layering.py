"""The layering: the engine (`anyv2v`) knows nothing of the app's job layer (`server`), the first-frame editors,
the app's Gradio side (`ui`) or Gradio, and the job layer knows nothing of Gradio or `ui` (only `app.py` and `ui`
do)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: which of the watched packages each import brought in.
PROBE = """
import importlib, json, pkgutil, sys

def loaded(watched):
    return sorted({name.split(".")[0] for name in sys.modules} & set(watched))

import anyv2v
report = {"anyv2v": loaded(("gradio", "editors", "server", "ui"))}
for info in pkgutil.iter_modules(anyv2v.__path__):
    if info.name != "__main__":  # runs the CLI; it only imports anyv2v.cli
        importlib.import_module("anyv2v." + info.name)
        report["anyv2v." + info.name] = loaded(("gradio", "editors", "server", "ui"))
import server
report["server"] = loaded(("gradio", "ui"))
for info in pkgutil.iter_modules(server.__path__):
    importlib.import_module("server." + info.name)
    report["server." + info.name] = loaded(("gradio", "ui"))
print(json.dumps(report))
"""


def test_engine_imports_no_app_layer_editors_or_gradio_and_the_job_layer_no_gradio():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "anyv2v.cli" in report and "anyv2v.pipeline" in report and "server.service" in report
    assert {module: found for module, found in report.items() if found} == {}
