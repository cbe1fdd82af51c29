"""The app's server-side pieces in `server/` that need no Gradio and no model: latest-wins bookkeeping of the
page's clip requests, what a reloaded page says about its browser's edit."""

from __future__ import annotations

import asyncio

import pytest

from server.session_latest import LatestWins
from server.visitor_jobs import VisitorJobs

# ---------------------------------------------------------------------------------------------------------
# The last settings win (issue 14 item 9)
# ---------------------------------------------------------------------------------------------------------


def test_latest_wins_one_at_a_time_per_session_and_superseded_results_dropped():
    """Three quick changes, the first one slow: only the last one's result is shown, the middle one never runs,
    and never two of a session at once; another session is not held up."""

    async def scenario():
        latest = LatestWins()
        running: dict[str, int] = {"a": 0, "b": 0}
        most: dict[str, int] = {"a": 0, "b": 0}
        ran: list[str] = []

        async def prepare(session: str, settings: str, seconds: float):
            ticket = latest.ticket(session)
            async with latest.turn(session, ticket) as current:
                if not current:
                    return None
                running[session] += 1
                most[session] = max(most[session], running[session])
                ran.append(settings)
                await asyncio.sleep(seconds)
                running[session] -= 1
            return settings if latest.is_latest(session, ticket) else None

        results = await asyncio.gather(
            prepare("a", "16 frames 512x512", 0.3), prepare("a", "8 frames 512x512", 0.2),
            prepare("b", "other visitor", 0.01), prepare("a", "8 frames 64x64", 0.01),
        )
        return results, most, ran

    results, most, ran = asyncio.run(scenario())
    assert results == [None, None, "other visitor", "8 frames 64x64"]
    assert most == {"a": 1, "b": 1}
    assert "8 frames 512x512" not in ran  # superseded while it waited: dropped before it ran
    assert ran.index("other visitor") < ran.index("8 frames 64x64")  # not queued behind session a


def test_latest_wins_a_later_request_after_the_first_ended_runs():
    async def scenario():
        latest = LatestWins()
        first = latest.ticket("s")
        async with latest.turn("s", first) as current:
            assert current
        assert latest.is_latest("s", first)
        second = latest.ticket("s")
        assert not latest.is_latest("s", first)
        async with latest.turn("s", first) as current:
            assert not current
        async with latest.turn("s", second) as current:
            assert current
        latest.forget("s")
        assert not latest.is_latest("s", second)

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------------------
# A reloaded page says what became of this browser's edit (issue 14 item 10)
# ---------------------------------------------------------------------------------------------------------


def test_reloaded_page_says_whether_this_browsers_edit_is_still_running():
    now = [1000.0]
    visitors = VisitorJobs(clock=lambda: now[0])
    assert visitors.status("browser-1", "s1") == "" and visitors.status(None, "s1") == ""
    visitors.started("browser-1", "s1")
    assert visitors.status("browser-1", "s1") == ""  # the page that started it shows its own progress
    assert "still running" in visitors.status("browser-1", "s2")  # another tab of the same browser
    assert visitors.status("browser-2", "s2") == ""  # another visitor learns nothing
    assert visitors.running() == 1
    assert visitors.left("s1") == 1  # the page was reloaded: its job was asked to stop
    assert "is stopping" in visitors.status("browser-1", "s2")
    now[0] += 5
    visitors.finished("browser-1", "s1", "stopped")
    assert "was stopped" in visitors.status("browser-1", "s2") and visitors.running() == 0
    visitors.started("browser-1", "s2")
    visitors.finished("browser-1", "s2", "done")
    assert visitors.status("browser-1", "s3") == ""  # a finished edit was shown on its page
    visitors.finished("browser-1", "s1", "failed")  # a late report of an older session changes nothing
    assert visitors._jobs["browser-1"].state == "done"


# ---------------------------------------------------------------------------------------------------------
# Password guessing with ANYV2V_AUTH is slowed down per client (issue 14 item 6)
# ---------------------------------------------------------------------------------------------------------


def test_login_throttle_free_failures_then_exponential_waits_per_client():
    from server.login_throttle import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(free_failures=3, base_delay=1.0, max_delay=60.0, clock=lambda: now[0])
    waits = [throttle.failed("1.2.3.4") for _ in range(10)]
    assert waits == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60]
    assert throttle.wait_s("1.2.3.4") == 60 and throttle.wait_s("5.6.7.8") == 0  # per client
    now[0] += 59.5
    assert throttle.wait_s("1.2.3.4") == 0.5
    now[0] += 1
    assert throttle.wait_s("1.2.3.4") == 0
    throttle.succeeded("1.2.3.4")
    assert throttle.failed("1.2.3.4") == 0  # a correct login starts over
    now[0] += 7200
    assert throttle.wait_s("1.2.3.4") == 0  # forgotten after an hour


def test_thirty_wrong_logins_at_once_get_three_checks_and_the_rest_wait(tmp_path):
    """Gradio's real login route behind the app's launch settings: 30 wrong passwords sent at once get 4
    answers and 26 refusals with Retry-After; another address is not affected; the right password, after the
    wait, logs in."""
    import gradio as gr
    import httpx
    from gradio.routes import App

    import app as webapp
    from server.settings import AppSettings

    settings = AppSettings(model=str(tmp_path / "m"), output_dir=str(tmp_path / "out"), auth=("ann", "right"))
    kwargs = webapp.launch_kwargs(settings)
    with gr.Blocks() as demo:
        gr.Markdown("hello")
    demo.auth = [kwargs["auth"]]
    server = App.create_app(demo, app_kwargs=dict(kwargs["app_kwargs"]))
    (throttle,) = [m.kwargs["throttle"] for m in kwargs["app_kwargs"]["middleware"]]
    throttle.base_delay = 30.0  # the burst is refused within the first wait even on a slow machine

    async def scenario():
        async def attempt(client: str, password: str) -> httpx.Response:
            transport = httpx.ASGITransport(app=server, client=(client, 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post("/login", data={"username": "ann", "password": password})

        burst = await asyncio.gather(*[attempt("10.0.0.1", f"guess{i}") for i in range(30)])
        other = await attempt("10.0.0.2", "wrong")
        refused_right = await attempt("10.0.0.1", "right")
        throttle.succeeded("10.0.0.1")  # as if the wait had passed
        right = await attempt("10.0.0.1", "right")
        return burst, other, refused_right, right

    burst, other, refused_right, right = asyncio.run(scenario())
    codes = sorted(r.status_code for r in burst)
    assert codes == [400] * 4 + [429] * 26, codes  # 3 free failures, the 4th sets a 1 s wait
    refused = [r for r in burst if r.status_code == 429][0]
    assert int(refused.headers["retry-after"]) >= 1 and "try again in" in refused.json()["detail"]
    assert other.status_code == 400  # another address: checked normally
    assert refused_right.status_code == 429  # during the wait not even the right password is checked
    assert right.status_code == 200
    assert webapp.launch_kwargs(AppSettings(model="m", output_dir=str(tmp_path / "o")))["app_kwargs"] == {}


def test_behind_a_reverse_proxy_logins_are_throttled_per_visitor(tmp_path):
    """A reverse proxy on the same host (nginx, Caddy) sends every visitor from 127.0.0.1 with X-Forwarded-For;
    the real `python app.py` (uvicorn trusts 127.0.0.1's forwarded address by default, FORWARDED_ALLOW_IPS for
    others) throttles each visitor on their own: one visitor's guessing never locks another out."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from tests.app_helpers import run_app

    env = {"ANYV2V_MODEL": str(tmp_path / "no-model-needed"), "ANYV2V_AUTH": "ann:right",
           "FORWARDED_ALLOW_IPS": "127.0.0.1,::1"}  # uvicorn's default, whatever this machine's environment says
    with run_app(tmp_path / "app", env) as server:

        def login(visitor: str, password: str) -> int:
            body = urllib.parse.urlencode({"username": "ann", "password": password}).encode()
            request = urllib.request.Request(server.url + "login", data=body, headers={"X-Forwarded-For": visitor})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        guesses = [login("203.0.113.5", f"guess{i}") for i in range(8)]
        assert guesses[:4] == [400] * 4 and 429 in guesses[4:], guesses  # 3 free failures, then waits
        assert login("198.51.100.7", "right") == 200  # another visitor behind the same proxy: not slowed


# ---------------------------------------------------------------------------------------------------------
# Time estimates calibrated from recorded step times (issue 14 item 11)
# ---------------------------------------------------------------------------------------------------------


def _recorded(seconds: dict, frames: int = 8, size: tuple[int, int] = (64, 64)):
    from pathlib import Path

    from anyv2v.pipeline import EditResult

    return EditResult(Path("a.mp4"), Path("a.json"), False, {"inversion": 10, "sampling": {"3": 5, "2": 5}},
                      seconds, [], frames, size, 8)


def test_estimates_from_recorded_step_times_about_only_with_data(tiny_model):
    from server.settings import AppSettings
    from server.step_timing import EditTimings

    config = AppSettings(model=str(tiny_model)).base_config().replace(steps=10, inversion_steps=10)
    timings = EditTimings()
    text = timings.text(config, 8, (64, 64), "cpu", model_loaded=False)
    assert "No time estimate yet" in text and "about" not in text and "loads the model" in text
    assert "loads the model" not in timings.text(config, 8, (64, 64), "cpu", model_loaded=True)

    # One recorded edit: the same edit is estimated at its measured time (UNet stages + reading/writing, no load).
    timings.record_edit(config, _recorded({"prepare": 1.0, "load": 30.0, "inversion": 10.0, "sampling": 40.0,
                                           "decode": 2.0, "write": 1.0}), "cpu")
    same = timings.estimate_edit(config, 8, (64, 64), "cpu")
    assert same.exact and same.seconds == pytest.approx(54.0)
    later = timings.estimate_edit(config, 8, (64, 64), "cpu", cached_inversion=True)
    assert later.seconds == pytest.approx(44.0)  # no inversion
    text = timings.text(config, 8, (64, 64), "cpu", model_loaded=True)
    assert "**about 54 s**" in text and "about 44 s for later edits" in text and "loads the model" not in text
    assert timings.estimate_edit(config, 8, (64, 64), "cuda") is None  # measured on another device kind only

    # Smoothed: one slow edit (twice the time) moves the estimate half way, it does not jump to it.
    timings.record_edit(config, _recorded({"prepare": 2.0, "inversion": 20.0, "sampling": 80.0, "decode": 4.0,
                                           "write": 2.0}), "cpu")
    assert timings.estimate_edit(config, 8, (64, 64), "cpu").seconds == pytest.approx(81.0)

    # Another size: a range around the nearest measured size's pace (4x the work here), said as a range.
    other = timings.estimate_edit(config, 8, (128, 128), "cpu")
    assert not other.exact and other.low < 4 * 81.0 < other.high and other.high / other.low < 10
    assert "measured here at other sizes" in timings.text(config, 8, (128, 128), "cpu", True)


def test_progress_time_left_follows_measured_stage_paces_without_jumping(tiny_model):
    """Inversion steps of 1 s and sampling steps of 4 s (a CPU: sampling is batch 2-3): with the measured
    ratio the time left falls by the time passed at every step, across the switch to sampling too."""
    from server.jobs import EngineProgress
    from server.settings import AppSettings
    from server.step_timing import EditTimings

    config = AppSettings(model=str(tiny_model)).base_config().replace(steps=10, inversion_steps=10)
    timings = EditTimings()
    timings.record_edit(config, _recorded({"inversion": 10.0, "sampling": 40.0}), "cpu")
    cost = timings.sampling_cost(config, 8, (64, 64), "cpu")
    assert cost == pytest.approx(4.0)
    now = [0.0]
    lefts: list[float] = []
    tracker = EngineProgress(lambda f, t: None, 10, 10, clock=lambda: now[0], sampling_cost=cost)
    for stage, seconds in (("inversion", 1.0), ("sampling", 4.0)):
        for step in range(0, 11):
            if step:
                now[0] += seconds
            tracker(stage, step, 10)
            left = tracker.time_left()
            if left is not None:
                lefts.append((now[0], left))
    finish = 10 * 1.0 + 10 * 4.0
    for at, left in lefts:
        assert at + left == pytest.approx(finish), (at, left)  # always the true end: no jumps


# ---------------------------------------------------------------------------------------------------------
# AnyDoor's target region on small frames (issue 14 item 13)
# ---------------------------------------------------------------------------------------------------------


def test_brush_scaled_to_the_frame_and_box_by_two_clicks():
    from server.region_tools import box_click, brush_size

    assert brush_size(64, 64) == 2 and brush_size(512, 512) == 16 and brush_size(1024, 576) == 32
    corner, box, text = box_click(None, 40.4, 10.6, 64, 64)
    assert corner == [40, 11] and box is None and "x=40, y=11" in text and "opposite corner" in text
    corner, box, text = box_click(corner, 12, 50, 64, 64)  # any two opposite corners, in any order
    assert corner is None and box == "12,11,40,50" and "28×39 pixels of the 64×64 frame" in text
    corner, box, _ = box_click([5, 5], 5.2, 30, 64, 64)  # too thin: start again from this click
    assert box is None and corner == [5, 30]
    assert box_click([1, 30], 500, -20, 64, 64)[1] == "1,0,64,30"  # clicks beyond the edge: clipped to the frame


def test_suggested_settings_and_candidate_captions():
    """An editor's suggested video settings: the values, the preset by intent they make and the sentence; none
    without suggestions. Candidates are captioned with the seed each used."""
    from server.messages import candidate_captions
    from server.presets import CHANGE_PRESETS, suggested_settings

    name, values = next(iter(CHANGE_PRESETS.items()))
    chosen, preset, note = suggested_settings("AnyDoor", dict(values))
    assert chosen == values and preset == name
    assert note.startswith(" Suggested settings for AnyDoor edits applied in step 3 (") and "tau_conv" in note
    assert suggested_settings("Manual", None) == ({}, None, "")
    assert candidate_captions(2, 41) == ["Candidate 1 (seed 41)", "Candidate 2 (seed 42)"]
    assert candidate_captions(1) == ["Candidate 1"]


def test_a_model_preloaded_by_another_service_counts_as_loaded(tiny_model, tmp_path):
    """'The first edit also loads the model' only when it is not in memory: a model another service (or the
    start-up preload) loaded is held by the backbone cache, and this service sees it."""
    from anyv2v.pipeline import BACKBONES
    from server.service import EditService
    from server.settings import AppSettings

    settings = AppSettings(model=str(tiny_model), output_dir=str(tmp_path / "out"), device="cpu")
    BACKBONES.clear()
    try:
        first, second = EditService(settings), EditService(settings)
        assert not first.model_loaded() and not BACKBONES.holds(str(tiny_model), "cpu")
        first.preload()
        assert BACKBONES.holds(str(tiny_model), "cpu") and second.model_loaded()
        assert not BACKBONES.holds(str(tiny_model), "cpu", backbone="seine")  # another backbone is another model
    finally:
        BACKBONES.clear()


def test_a_model_error_shows_the_visitor_no_server_path(caplog) -> None:
    """Model folders and caches named in an engine error stay in the server log; the page and the API get their
    last part only (URLs and fractions are left alone)."""
    import logging

    from anyv2v.errors import ModelLoadError
    from server.messages import user_message

    error = ModelLoadError("/root/.cache/huggingface/hub/models--TIGER-Lab--ConsistI2V/snapshots/abc/unet holds .bin "
                           "pickles only; see https://example.org/a/b.html (1/32 of the side)")
    with caplog.at_level(logging.WARNING, logger="anyv2v.app"):
        text, expected = user_message(error, "editing the video")
    assert expected and "/root" not in text and "huggingface" not in text
    assert text.startswith("unet holds .bin pickles only") or text.startswith("Unet holds .bin pickles only")
    assert "https://example.org/a/b.html" in text and "1/32" in text
    assert "/root/.cache/huggingface" in caplog.text  # the operator still sees where


def test_an_edit_that_never_started_is_not_stopping_forever() -> None:
    """A tab closed while its edit still waited in the queue: Gradio drops the queued event, so nothing reports
    the end; the reloaded page says "stopping" only as long as a step takes, then "stopped"."""
    from server.visitor_jobs import STOPPING_AT_MOST_S, VisitorJobs

    now = [1000.0]
    jobs = VisitorJobs(clock=lambda: now[0])
    jobs.started("browser-1", "session-a")
    assert jobs.left("session-a") == 1
    assert "is stopping" in jobs.status("browser-1", "session-b") and jobs.running() == 1
    now[0] += STOPPING_AT_MOST_S + 1
    assert "was stopped" in jobs.status("browser-1", "session-b") and jobs.running() == 0

