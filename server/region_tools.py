"""Marking a region on the prepared first frame (AnyDoor's target): a brush sized to the frame, and a box set by
two clicks whose pixel coordinates the visitor sees, instead of a box typed blind."""

from __future__ import annotations

BRUSH_FRACTION = 1 / 32  # of the frame's longer side: 2 px on 64x64, 16 px on 512x512


def brush_size(width: int, height: int) -> int:
    """Default brush diameter in frame pixels: a stroke marks a detail, not the whole frame."""
    return max(2, round(max(int(width), int(height)) * BRUSH_FRACTION))


def box_click(corner: list[int] | None, x: float, y: float, width: int, height: int) -> tuple[list[int] | None, str | None, str]:
    """One click at (x, y) of the frame while marking a box: (the first corner to keep or None, the box
    "x0,y0,x1,y1" once both corners are clicked or None, the line to show)."""
    px = min(max(int(round(x)), 0), max(int(width), 1))
    py = min(max(int(round(y)), 0), max(int(height), 1))
    if corner is None:
        return [px, py], None, (f"Box corner at x={px}, y={py} (pixels of the {width}×{height} frame): now click the "
                                "opposite corner.")
    x0, x1 = sorted((corner[0], px))
    y0, y1 = sorted((corner[1], py))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return [px, py], None, f"That is the same spot; box corner now at x={px}, y={py}: click the opposite corner."
    box = f"{x0},{y0},{x1},{y1}"
    return None, box, f"Target box set to {box} ({x1 - x0}×{y1 - y0} pixels of the {width}×{height} frame)."
