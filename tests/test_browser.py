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
def server(tmp_path_factory, tiny_backbone_env):
    root = tmp_path_factory.mktemp("app_browser")
    with run_app(root, {**make_models(root / "models"), **tiny_backbone_env}) as running:
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
    """Pick a value of a dropdown by typing it and pressing Enter, as a user does; check it stuck. A server
    update still on its way from an earlier change (e.g. steps, which re-derives the inversion steps) can land
    after the pick and reset it, as it would for a quick user: then pick again, as that user would."""
    box = page.locator(f"#{elem_id} input").first
    option = page.get_by_role("option", name=str(value), exact=True).first
    for _ in range(5):
        box.click()
        box.fill("")
        box.press_sequentially(str(value), delay=30)
        try:
            option.wait_for(timeout=5_000)
        except Exception:
            box.press("Escape")
            page.wait_for_timeout(1_000)
            continue
        option.click()
        page.wait_for_timeout(1_500)  # long enough for a late update to land
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} did not keep {value} (shows {box.input_value()!r})")


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


def test_choosing_a_video_model_applies_its_defaults_and_edits_with_it(page, server, tmp_path):
    """Advanced settings > Video model: ConsistI2V sets its 256x256, guidance 35 and start index 4 and says so;
    SEINE offers only inversion step counts its grid serves (20, not 10, for 10 steps) and edits the video."""
    from playwright.sync_api import expect

    page.get_by_text("Advanced settings").click()
    # The first number typed into the just-opened accordion can stay in the box without reaching the server
    # (seen with Playwright's fill; see set_number): one warm-up change first, which the model choice resets.
    set_number(page, "steps", 12)
    page.wait_for_timeout(1000)
    choose(page, "video-model", "ConsistI2V")
    expect(page.locator("#video-model-note")).to_contain_text("Applied ConsistI2V's defaults: 256×256")
    expect(page.locator("#height")).to_contain_text("256×256 is ConsistI2V's size")  # said in step 1 too
    for elem_id, value in (("width", "256"), ("height", "256"), ("guidance", "35"), ("start-index", "4")):
        expect(page.locator(f"#{elem_id} input[type=number]").first).to_have_value(value)
    choose(page, "video-model", "SEINE")
    expect(page.locator("#video-model-note")).to_contain_text("Applied SEINE's defaults: 512×512")
    expect(page.locator("#guidance input[type=number]").first).to_have_value("4")
    page.wait_for_timeout(3000)
    set_number(page, "steps", TINY_EDIT["steps"])
    page.wait_for_timeout(1_500)  # the steps change re-derives the inversion steps; let that land first
    box = page.locator("#inversion-steps input").first
    box.click()
    expect(page.get_by_role("option", name="20", exact=True)).to_have_count(1)
    offered = page.get_by_role("option").all_inner_texts()
    assert "10" not in offered and "40" in offered  # 10 is not on SEINE's kept grid for 10 steps
    box.press("Escape")
    choose(page, "inversion-steps", 20)
    prepare_small_clip(page)
    page.locator("#edited-frame input[type=file]").set_input_files(str(EDITED))
    expect(page.locator("#frame-status")).to_contain_text("Using the uploaded frame", timeout=60_000)
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#run-btn").click()
    outcome = page.wait_for_function(WAIT_FOR_RESULT_JS, timeout=EDIT_TIMEOUT_MS).json_value()
    page.screenshot(path=str(tmp_path / "seine-result.png"), full_page=True)
    assert outcome == "ok", outcome
    assert "video edit started (seine)" in server.log()
    import json

    record = json.loads(sorted(server.output_dir.glob("*-edit-*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())
    assert record["settings"]["backbone"] == "seine" and record["settings"]["inversion_steps"] == 20


def test_candidates_and_their_use_button_show_only_on_tabs_that_make_candidates(page):
    """The manual tab has its own "Use the uploaded frame" button; the candidates gallery and "Use this frame"
    belong to the editors that make candidates, and show again on their tabs."""
    from playwright.sync_api import expect

    from editors import get_editor

    instruct, manual = get_editor("instruct_pix2pix"), get_editor("manual")
    expect(page.locator("#use-frame-btn")).to_be_visible()
    expect(page.locator("#candidates")).to_be_visible()
    page.get_by_role("tab", name=manual.title).click()
    expect(page.locator("#manual-run")).to_be_visible()
    expect(page.locator("#use-frame-btn")).to_be_hidden()
    expect(page.locator("#candidates")).to_be_hidden()
    page.get_by_role("tab", name=instruct.title).click()
    expect(page.locator("#use-frame-btn")).to_be_visible()
    expect(page.locator("#candidates")).to_be_visible()


def test_jpeg_edited_frame_from_a_phone_gets_a_video(page, server, tmp_path):
    """A phone photo (JPEG, EXIF-rotated) as the edited first frame: accepted, used, and the edit runs."""
    from playwright.sync_api import expect

    from tests.app_helpers import jpeg_variants

    page.get_by_text("Advanced settings").click()
    set_number(page, "steps", TINY_EDIT["steps"])
    choose(page, "inversion-steps", TINY_EDIT["inversion_steps"])
    prepare_small_clip(page)
    photo = jpeg_variants(tmp_path / "jpegs")["exif"]
    page.locator("#edited-frame input[type=file]").set_input_files(str(photo))
    expect(page.locator("#frame-status")).to_contain_text("Using the uploaded frame", timeout=60_000)
    expect(page.locator("#edited-frame img")).to_be_visible()
    page.locator("#prompt textarea").fill(PROMPT)
    expect(page.locator("#run-btn")).to_be_enabled()
    page.locator("#run-btn").click()
    outcome = page.wait_for_function(WAIT_FOR_RESULT_JS, timeout=EDIT_TIMEOUT_MS).json_value()
    page.screenshot(path=str(tmp_path / "jpeg-result.png"), full_page=True)
    assert outcome == "ok", outcome
    expect(page.locator("#edit-status")).to_contain_text("8 frames, 64×64, 8 fps")
    assert "cannot write mode" not in server.log()


def test_three_quick_changes_end_at_the_last_settings(page, tmp_path):
    """Frames, width and height changed quickly after an upload at the default 512x512: the clip, its first
    frame and the caption end at the last settings and stay there (a slower earlier prepare cannot win)."""
    from playwright.sync_api import expect

    page.locator("#source-video input[type=file]").set_input_files(str(CLIP))
    page.wait_for_timeout(300)  # the upload's prepare (16 frames at 512x512) is under way
    for elem_id, value in (("frames", 8), ("width", 64), ("height", 128)):
        box = page.locator(f"#{elem_id} input[type=number]").first
        box.fill(str(value))
        box.press("Enter")
    expect(page.locator("#clip-info")).to_contain_text("8 frames at 8 fps", timeout=90_000)
    expect(page.locator("#clip-info")).to_contain_text("64×128", timeout=30_000)
    page.wait_for_timeout(4000)  # anything still running would land now
    expect(page.locator("#clip-info")).to_contain_text("64×128")
    expect(page.locator("#clip-info")).to_contain_text("8 frames at 8 fps")
    size = page.evaluate("""() => new Promise(resolve => {
        const img = document.querySelector('#first-frame img');
        const done = () => resolve([img.naturalWidth, img.naturalHeight]);
        img.complete ? done() : img.addEventListener('load', done);
    })""")
    assert size == [64, 128], size
    page.screenshot(path=str(tmp_path / "quick-changes.png"), full_page=True)


def test_reloading_mid_edit_stops_it_and_the_page_says_so(page, server, tmp_path):
    """A reload mid-edit: the edit stops at its next step (the GPU is free for others), and the reloaded page
    tells this browser what became of it."""
    from playwright.sync_api import expect

    page.get_by_text("Advanced settings").click()
    set_number(page, "steps", TINY_EDIT["steps"])
    choose(page, "inversion-steps", 999)  # minutes of inversion steps on this machine
    prepare_small_clip(page)
    page.locator("#edited-frame input[type=file]").set_input_files(str(EDITED))
    expect(page.locator("#frame-status")).to_contain_text("Using the uploaded frame", timeout=60_000)
    page.locator("#prompt textarea").fill(PROMPT)
    stopped = server.log().count("stopped after a cancel")
    page.locator("#run-btn").click()
    expect(page.locator("#output-video")).to_contain_text("inverting the source video", timeout=90_000)
    page.reload()
    page.wait_for_selector("#source-video input[type=file]", state="attached")
    import re

    expect(page.locator("#edit-status")).to_contain_text(re.compile(r"Your previous edit (is stopping|was stopped)"),
                                                         timeout=30_000)
    page.screenshot(path=str(tmp_path / "reloaded.png"), full_page=True)
    deadline = 30_000
    while server.log().count("stopped after a cancel") == stopped and deadline > 0:
        page.wait_for_timeout(200)
        deadline -= 200
    assert deadline > 0, "the edit of the reloaded page kept running:\n" + server.log()[-2000:]


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


def test_a_photo_on_the_video_box_gets_the_apps_own_message(page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#source-video input[type=file]").set_input_files(str(EDITED))
    toast = page.locator(".toast-body").filter(has_text="is an image, not a video")
    expect(toast.first).to_be_visible(timeout=60_000)
    expect(toast.first).to_contain_text(EDITED.name)
    assert "Invalid file type" not in page.content()


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


def test_anydoor_target_box_by_two_clicks_on_the_first_frame(page, tmp_path):
    """On the AnyDoor tab two clicks on the prepared first frame set the target box, in that frame's pixels, and
    say the coordinates; on another tab a click sets no box."""
    import re

    from playwright.sync_api import expect

    from editors import get_editor

    prepare_small_clip(page)  # 64x64
    frame = page.locator("#first-frame img")
    expect(frame).to_be_visible()
    box_input = page.locator("#anydoor-box input, #anydoor-box textarea").first
    frame.click()  # the default (first) tab is not AnyDoor: nothing happens
    page.wait_for_timeout(2000)  # (processed before the tab changes)
    page.get_by_role("tab", name=get_editor("anydoor").title).click()
    page.wait_for_timeout(500)
    assert box_input.input_value() == ""
    # Where frame pixel (x, y) is on the page: the frame is shown scaled down to fit, never up (object-fit).
    width, height, natural_w, natural_h = page.evaluate("""() => { const i = document.querySelector('#first-frame img');
        const r = i.getBoundingClientRect(); return [r.width, r.height, i.naturalWidth, i.naturalHeight]; }""")
    scale = min(width / natural_w, height / natural_h, 1)

    def at(x: float, y: float) -> dict:
        return {"x": (width - natural_w * scale) / 2 + x * scale, "y": (height - natural_h * scale) / 2 + y * scale}

    frame.click(position=at(16, 16))
    expect(page.locator(".toast-body").filter(has_text=re.compile(r"x=1[5-7], y=1[5-7]")).first).to_be_visible()
    frame.click(position=at(48, 48))
    expect(box_input).to_have_value(re.compile(r"^\d+,\d+,\d+,\d+$"), timeout=30_000)
    x0, y0, x1, y1 = map(int, box_input.input_value().split(","))
    assert [abs(v - t) <= 1 for v, t in ((x0, 16), (y0, 16), (x1, 48), (y1, 48))] == [True] * 4, (x0, y0, x1, y1)
    expect(page.locator(".toast-body").filter(has_text="Target box set to").first).to_be_visible()


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
        # The examples: every thumbnail inside the screen, the first row below the label (not under it), and no
        # empty band below the last row.
        layout = page.evaluate("""() => {
            const gallery = document.querySelector('#examples');
            const label = gallery.querySelector('label, [data-testid="block-label"]').getBoundingClientRect();
            const items = [...gallery.querySelectorAll('.thumbnail-item')].map(i => i.getBoundingClientRect());
            return {labelBottom: label.bottom, galleryBottom: gallery.getBoundingClientRect().bottom,
                    top: Math.min(...items.map(i => i.top)), bottom: Math.max(...items.map(i => i.bottom)),
                    right: Math.max(...items.map(i => i.right)), left: Math.min(...items.map(i => i.left))};
        }""")
        assert layout["left"] >= 0 and layout["right"] <= 390, layout
        assert layout["top"] >= layout["labelBottom"] - 1, layout
        assert layout["galleryBottom"] - layout["bottom"] < 40, layout
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
