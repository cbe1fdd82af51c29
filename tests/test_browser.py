"""The app in a real browser: Playwright driving Debian's Chromium (installed with apt; no browser downloads)
against `python app.py` serving tiny local models. Screenshots go to the test's temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.app_helpers import CLIP, EDITED, PROMPT, TINY_EDIT, make_models, run_app

CHROMIUM = Path(os.environ.get("ANYV2V_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EDIT_TIMEOUT_MS = 150_000  # one tiny edit on a busy 2-core machine, with margin

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (CI installs Debian's chromium with apt-get)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_browser")
    with run_app(root, make_models(root / "models")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # requirements-dev.txt; its browser download is never used

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server.url)
    page.wait_for_selector("#source-video input[type=file]", state="attached")
    yield page
    context.close()


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a number box (a slider's, or a plain one) as a user does, and check the value stuck: a
    component that is still mounting (e.g. in an accordion that just opened) can reset it."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input[type=number]").first
    expect(box).to_be_visible()
    for _ in range(3):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        page.wait_for_timeout(300)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} did not keep the value {value} (shows {box.input_value()!r})")


def choose(page, elem_id: str, value: int) -> None:
    """Pick a value of a dropdown by typing it and pressing Enter, as a user does; check it stuck."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(str(value))
    page.get_by_role("option", name=str(value), exact=True).first.click()
    page.wait_for_timeout(300)
    assert box.input_value() == str(value), box.input_value()


def prepare_small_clip(page) -> None:
    set_number(page, "frames", TINY_EDIT["frames"])
    set_number(page, "width", TINY_EDIT["width"])
    set_number(page, "height", TINY_EDIT["height"])
    page.locator("#source-video input[type=file]").set_input_files(str(CLIP))
    from playwright.sync_api import expect

    expect(page.locator("#clip-info")).to_contain_text("8 frames at 8 fps", timeout=60_000)


# Resolves to "ok" once the output video has a duration, or to the text of an error toast.
WAIT_FOR_RESULT_JS = """() => {
    const video = document.querySelector('#output-video video');
    if (video && video.duration > 0) return 'ok';
    const toast = document.querySelector('.toast-body');
    return toast ? 'error: ' + toast.innerText : false;
}"""


def test_upload_edit_with_manual_frame_and_play_result(page, server, tmp_path):
    from playwright.sync_api import expect

    from editors import get_editor

    # Headings a non-programmer follows.
    for heading in ("1. Video", "2. First frame", "3. Video edit"):
        expect(page.get_by_role("heading", name=heading)).to_be_visible()

    # Small settings first (step 3's advanced ones too), so the upload prepares the small clip.
    page.get_by_text("Advanced settings").click()
    set_number(page, "steps", TINY_EDIT["steps"])
    choose(page, "inversion-steps", TINY_EDIT["inversion_steps"])  # only valid values are offered
    set_number(page, "frames", TINY_EDIT["frames"])
    set_number(page, "width", TINY_EDIT["width"])
    set_number(page, "height", TINY_EDIT["height"])

    # 1. The upload prepares the clip.
    page.locator("#source-video input[type=file]").set_input_files(str(CLIP))
    expect(page.locator("#clip-info")).to_contain_text("8 frames at 8 fps", timeout=60_000)
    expect(page.locator("#first-frame img")).to_be_visible()
    page.screenshot(path=str(tmp_path / "1-clip.png"), full_page=True)

    # 2. The manual tab: upload an edited frame and use it.
    page.get_by_role("tab", name=get_editor("manual").title).click()
    page.locator("#manual-image input[type=file]").set_input_files(str(EDITED))
    expect(page.locator("#manual-image img")).to_be_visible()
    page.locator("#manual-run").click()
    expect(page.locator("#edited-frame img")).to_be_visible(timeout=60_000)
    expect(page.locator("#frame-status")).to_contain_text("Using this frame")
    page.screenshot(path=str(tmp_path / "2-first-frame.png"), full_page=True)

    # 3. Prompt and run.
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#run-btn").click()
    outcome = page.wait_for_function(WAIT_FOR_RESULT_JS, timeout=EDIT_TIMEOUT_MS).json_value()
    page.screenshot(path=str(tmp_path / "3-result.png"), full_page=True)
    assert outcome == "ok", outcome
    duration = page.evaluate("document.querySelector('#output-video video').duration")
    assert duration > 0
    expect(page.locator("#edit-status")).to_contain_text("8 frames, 64×64, 8 fps")
    expect(page.locator("#downloads")).to_contain_text(".json")
    assert "Traceback" not in page.content()
    outputs = sorted(server.output_dir.glob("*-edit-*.mp4"))
    assert outputs and outputs[-1].with_suffix(".json").is_file()


def test_bad_upload_shows_an_error_message(page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("this is a text file renamed to .mp4\n")
    page.locator("#source-video input[type=file]").set_input_files(str(bad))
    toast = page.locator(".toast-body").filter(has_text="not a readable video")
    expect(toast.first).to_be_visible(timeout=60_000)
    expect(toast.first).to_contain_text("not_a_video.mp4")
    page.screenshot(path=str(tmp_path / "bad-upload.png"))
    assert "Traceback" not in page.content()
    expect(page.locator("#first-frame img")).to_have_count(0)  # nothing stale from a previous clip


def test_rgba_manual_upload_keeps_the_source_in_its_transparent_area(page, server, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    from editors import get_editor

    prepare_small_clip(page)
    painted = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    painted.paste((0, 255, 0, 255), (0, 0, 64, 20))  # paint the top only; the rest stays transparent
    path = tmp_path / "top-only.png"
    painted.save(path)
    page.get_by_role("tab", name=get_editor("manual").title).click()
    page.locator("#manual-image input[type=file]").set_input_files(str(path))
    expect(page.locator("#manual-image img")).to_be_visible()
    page.locator("#manual-run").click()
    expect(page.locator("#frame-status")).to_contain_text("Using this frame", timeout=60_000)
    (result,) = sorted((server.output_dir / "frames").glob("first-frame-manual-*.png"), key=lambda p: p.stat().st_mtime)[-1:]
    source = sorted((server.output_dir / "clips").glob("first-frame-*.png"), key=lambda p: p.stat().st_mtime)[-1]
    edited = np.asarray(Image.open(result).convert("RGB"), dtype=int)
    original = np.asarray(Image.open(source).convert("RGB"), dtype=int)
    assert (edited[:20] == [0, 255, 0]).all()
    assert np.abs(edited[20:] - original[20:]).max() <= 1  # the source frame, not black or white


def test_corrupt_edited_frame_shows_a_readable_message(page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    page.locator("#edited-frame input[type=file]").set_input_files(str(bad))
    toast = page.locator(".toast-body").filter(has_text="is not a readable image")
    expect(toast.first).to_be_visible(timeout=60_000)
    expect(toast.first).to_contain_text("broken.png")
    assert "show_error" not in toast.first.inner_text()
    page.screenshot(path=str(tmp_path / "corrupt-frame.png"))


def test_phone_width_no_horizontal_scroll_tabs_reachable_and_examples(browser, server, tmp_path):
    from playwright.sync_api import expect

    import editors

    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(server.url)
        page.wait_for_selector("#source-video input[type=file]", state="attached")
        page.wait_for_timeout(1000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        for editor in editors.available_editors().values():  # every tab is a visible button, none in a menu
            expect(page.get_by_role("tab", name=editor.title)).to_be_visible()
        # An example fills in everything (small settings on this CPU server) and prepares its clip.
        page.locator("#examples .thumbnail-item").first.click()
        expect(page.locator("#clip-info")).to_contain_text("8 frames at 8 fps", timeout=90_000)
        expect(page.locator("#edited-frame img")).to_be_visible()
        assert page.locator("#prompt textarea").input_value()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    finally:
        context.close()
