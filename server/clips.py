"""The prepared-clip cache: the most recently used clips at their working size, bounded in bytes and shared by
every visitor."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from anyv2v.config import EditConfig
from anyv2v.pipeline import PreparedClip


@dataclass
class PreparedEntry:
    prepared: PreparedClip
    config: EditConfig
    summary: str
    preview_path: str | None = None  # the page's preview mp4 and first-frame PNG (the API writes none)
    first_frame_path: str | None = None

    @property
    def nbytes(self) -> int:
        """Pixel bytes of the working-size frames (what the cache holds)."""
        return sum(len(frame.getbands()) * frame.width * frame.height for frame in self.prepared.frames)


class ClipCache:
    """The most recently used prepared clips, bounded by the bytes of their frames (least recent out first).

    A clip larger than the whole budget is used for its request and not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, PreparedEntry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> PreparedEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: PreparedEntry) -> None:
        with self._lock:
            self._entries.pop(key, None)
            if entry.nbytes > self.max_bytes:
                return
            self._entries[key] = entry
            while sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
                self._entries.popitem(last=False)
