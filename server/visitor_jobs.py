"""Which video edit each browser has started, so a visitor who reloads the page is told what became of it.

A page reload or a closed tab ends the Gradio session; the app then asks that session's jobs to stop at their
next step (`EditService.cancel`), so the GPU goes to the next visitor. The browser keeps an id of its own in
local storage (`gr.BrowserState`); this registry maps it to its latest edit, and the reloaded page shows the
line `status` gives: still running (in another tab), stopping, stopped, or finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

FORGET_AFTER_S = 3600.0  # a browser's finished edit is mentioned for this long after it ended
# A job asked to stop ends within one step; one still "stopping" after this never started (its queued event was
# dropped with the session), so it counts as stopped.
STOPPING_AT_MOST_S = 120.0


@dataclass
class VisitorJob:
    session: str
    started: float
    state: str = "running"  # running | stopping | stopped | done | failed
    ended: float | None = None


class VisitorJobs:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._jobs: dict[str, VisitorJob] = {}
        self._lock = threading.Lock()

    def _forget_old(self) -> None:
        now = self.clock()
        for browser in [b for b, j in self._jobs.items() if j.ended is not None and now - j.ended > FORGET_AFTER_S]:
            del self._jobs[browser]

    def started(self, browser: str | None, session: str) -> None:
        if not browser:
            return
        with self._lock:
            self._forget_old()
            self._jobs[browser] = VisitorJob(session, self.clock())

    def left(self, session: str) -> int:
        """The session's page went away and its jobs were asked to stop; how many of them were running."""
        count = 0
        with self._lock:
            for job in self._jobs.values():
                if job.session == session and job.state == "running":
                    job.state, job.ended, count = "stopping", self.clock(), count + 1
        return count

    def _state(self, job: VisitorJob) -> str:
        if job.state == "stopping" and job.ended is not None and self.clock() - job.ended > STOPPING_AT_MOST_S:
            return "stopped"
        return job.state

    def finished(self, browser: str | None, session: str, state: str) -> None:
        """The job of `browser` started in `session` ended as "done", "stopped" or "failed"."""
        with self._lock:
            job = self._jobs.get(browser or "")
            if job is not None and job.session == session:
                job.state, job.ended = state, self.clock()

    def running(self) -> int:
        with self._lock:
            return sum(self._state(job) in ("running", "stopping") for job in self._jobs.values())

    def status(self, browser: str | None, session: str) -> str:
        """One line for the page of `browser` (now in `session`) about its latest edit; "" when there is none."""
        with self._lock:
            job = self._jobs.get(browser or "")
            if job is None or job.session == session:
                return ""
            ago = max(self.clock() - (job.ended if job.ended is not None else job.started), 0.0)
            when = f"{ago / 60:.0f} min ago" if ago >= 60 else f"{ago:.0f} s ago"
            if self._state(job) == "running":
                return ("**An edit you started from this browser (in another tab) is still running.** Its result "
                        "appears in that tab; an edit started here waits for it.")
            if self._state(job) == "stopping":
                return ("**Your previous edit is stopping:** its page was closed or reloaded, so it was cancelled "
                        "and ends after its current step. Nothing from it is kept; start the edit again here.")
            if self._state(job) == "stopped":
                return (f"**Your previous edit was stopped** ({when}) because its page was closed or reloaded; "
                        "nothing was written. Start the edit again here.")
            return ""  # finished or failed: that page showed it
