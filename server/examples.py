"""The page's examples from the demo manifest, and the clip settings an example sets on this server."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .settings import AppSettings


@dataclass(frozen=True)
class Example:
    video: str
    edited_frame: str
    prompt: str
    tau_conv: float
    tau_sa: float
    tau_ta: float
    start_index: int
    label: str


def list_examples(demo_dir: str | os.PathLike) -> list[Example]:
    """Examples from the demo manifest (clip, edited first frame, prompt, tau and T'); [] when it is missing."""
    demo_dir = Path(demo_dir)
    manifest_path = demo_dir / "manifest.json"
    if not manifest_path.is_file():
        return []
    manifest = json.loads(manifest_path.read_text())
    videos = manifest.get("videos", {})
    examples: list[Example] = []
    for edit in manifest.get("edits", []):
        video = videos.get(edit.get("video"), {})
        video_path = demo_dir / video.get("file", "")
        frame_path = demo_dir / edit.get("edited_frame", "")
        if not (video_path.is_file() and frame_path.is_file()):
            continue  # a partial copy of the assets: skip what is not there
        examples.append(
            Example(
                video=str(video_path),
                edited_frame=str(frame_path),
                prompt=edit["prompt"],
                tau_conv=float(edit.get("tau_conv", 0.2)),
                tau_sa=float(edit.get("tau_sa", 0.2)),
                tau_ta=float(edit.get("tau_ta", 0.5)),
                start_index=int(edit.get("start_index", 0)),
                label=f"{edit['video'].replace('_', ' ')}: {edit.get('instruction', edit['prompt'])}",
            )
        )
    return examples


def example_clip_settings(settings: AppSettings) -> dict[str, int]:
    """Clip and step settings an example sets: the model's own on a GPU, small ones that finish on a CPU."""
    base = settings.base_config()
    if settings.device_name.startswith("cuda"):
        values = {"frames": 16, "fps": 8, "width": 512, "height": 512, "steps": base.steps}
    else:
        values = {"frames": 8, "fps": 8, "width": 256, "height": 256, "steps": 10}
    values["frames"] = min(values["frames"], settings.max_frames)
    values["width"] = min(values["width"], settings.max_size)
    values["height"] = min(values["height"], settings.max_size)
    return values
