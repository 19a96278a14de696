"""The FiftyOne App in a real browser: find *SAM-Veteran: Run agent* in the operator browser, run it, see the new
fields; correct a mask in the refine panel, save it and let the agent continue; the evaluation panel's layout at two
window sizes.

Debian's Chromium driven by Playwright (never `playwright install`: it downloads). One App server and one browser
serve every test of the module. Screenshots go to test-artifacts/browser/. With CI=true a missing Chromium fails
the test; elsewhere it is skipped with the reason.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import fiftyone as fo
import fiftyone.server.main
import numpy as np
import pytest

from sam_veteran.plugin.agent.clicks import next_click
from sam_veteran.plugin.demo import run_demo
from sam_veteran.plugin.labels import AGENT, HUMAN, placed_crop
from sam_veteran.plugin.refine import POLICY_ENV, read_history, refiner_for

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {CHROMIUM} is missing: the README set-up block installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (Debian's build; never `playwright install`)")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The demo on four scenes, as `sam-veteran demo` makes it: the shipped mini agent under `veteran` and the
    simulated user under `oracle`, both with the mini segmenter and evaluated (keys `eval` and `oracle`)."""
    name = f"browser-scenes-{uuid.uuid4().hex[:8]}"  # the database may be shared with other test sessions
    dataset, _ = run_demo("mini", "mini", tmp_path_factory.mktemp("scenes"), num_samples=4, name=name)
    yield dataset
    dataset.delete()


@pytest.fixture(scope="module")
def app_url(installed_plugin, scenes):
    """The App server on a free local port, ended by its PID. Its refine panel's policy is the simulated user
    (`refine.POLICY_ENV`; it reads the scenes' ground truth), so that letting the agent continue surely adds
    steps: the mini agent mostly stops at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "app-server.log", "w")
    server = subprocess.Popen([sys.executable, fiftyone.server.main.__file__, "--port", str(port),
                               "--address", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, POLICY_ENV: "oracle"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the App server did not start; see {log.name}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(browser):
    """A page of the given viewport size, the App's promotional popover dismissed; closed after the test."""
    pages = []

    def make(width: int = 1400, height: int = 900):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.add_init_script("localStorage.setItem('fiftyone-enterprise-tooltip-seen', 'true')")
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()


def open_grid(page, url: str) -> None:
    """Open the dataset's grid; close the modal if the App brings back the one an earlier test left open."""
    page.goto(url)
    page.wait_for_selector("[data-cy=fo-grid] [data-cy=looker] canvas", timeout=60_000)
    page.wait_for_timeout(1500)  # the App restores its session's modal after the grid appears
    if page.locator("[data-cy=modal]").count():
        page.locator("[data-cy=modal-looker-container]").click()  # Escape closes the modal from its image
        page.keyboard.press("Escape")
        page.locator("[data-cy=modal]").wait_for(state="detached", timeout=10_000)


def test_run_sam_veteran_from_the_operator_browser(new_page, app_url, scenes, tiny_models):
    page = new_page()
    open_grid(page, f"{app_url}/datasets/{scenes.name}")
    for field in ("veteran_mask", "veteran_steps", "veteran_clicks"):
        page.get_by_text(field, exact=True).wait_for()
    page.screenshot(path=ARTIFACTS / "01-grid-with-agent-results.png")

    page.locator("[data-cy=fo-grid] [data-cy=looker] canvas").first.click()
    page.wait_for_timeout(2500)
    page.screenshot(path=ARTIFACTS / "02-sample-steps-and-clicks.png")
    page.keyboard.press("Escape")

    page.click("[data-cy=action-browse-operations]")
    page.fill("[data-cy=operators-browser-search]", "SAM-Veteran: Run agent")
    page.locator("[data-cy=operators-browser]").get_by_text("SAM-Veteran: Run agent").first.wait_for()
    page.keyboard.press("Enter")
    form = page.locator("[data-cy=operators-prompt-modal]")
    form.wait_for(timeout=20_000)
    form.locator('input[value="veteran"]').fill("tiny")
    form.locator('input[value="Qwen/Qwen2.5-VL-7B-Instruct"]').fill(str(tiny_models["policy-qwen2_5_vl"]))
    form.locator('input[value="vit_h"]').fill(str(tiny_models["segmenter"]))
    form.locator('input[type=number]').first.fill("1")  # max steps: empty = the family's default
    form.locator('input[value="512"]').fill("16")
    page.screenshot(path=ARTIFACTS / "03-operator-form.png")
    form.get_by_role("button", name="Execute").click()

    page.get_by_text("4/4 samples written (0 failed, 0 already had results)").wait_for(timeout=90_000)
    page.screenshot(path=ARTIFACTS / "04-progress.png")
    page.get_by_role("button", name="Done").click()
    for field in ("tiny_mask", "tiny_steps", "tiny_clicks"):  # the App reloaded the dataset
        page.get_by_text(field, exact=True).wait_for(timeout=20_000)
    page.wait_for_selector("[data-cy=fo-grid] [data-cy=looker] canvas")
    page.wait_for_timeout(1000)
    page.screenshot(path=ARTIFACTS / "05-new-fields.png")

    scenes.reload()
    assert scenes.exists("tiny_mask").count() == 4
    assert all(m.mask.shape == (s.metadata.height, s.metadata.width)
               for s, m in zip(scenes, scenes.values("tiny_mask")))
    assert isinstance(scenes.get_field("tiny_steps").document_type(), fo.Detections)


def _full_mask(detection, width, height):
    crop, x, y = placed_crop(np.asarray(detection.mask, dtype=bool), detection.bounding_box, width, height)
    full = np.zeros((height, width), dtype=bool)
    full[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    return full


def test_correct_a_mask_in_the_refine_panel_and_let_the_agent_continue(new_page, app_url, scenes):
    """On the sample the mini agent did worst on, a person makes the simulated user's two clicks (each at the
    largest error's interior, computed here with the SDK's own refiner, exactly as the panel refines), saves them
    and lets the agent continue: the simulated user, stopping at IoU 0.9, stands in for it."""
    def iou(sample):
        gt, mask = sample.ground_truth.mask > 0, sample.veteran_mask.mask > 0
        return np.count_nonzero(gt & mask) / np.count_nonzero(gt | mask)

    sample = min((s for s in scenes if s.veteran_mask is not None), key=iou)
    width, height = sample.metadata.width, sample.metadata.height
    truth = sample.ground_truth.mask > 0
    stored = len(sample.veteran_steps.detections)
    before = _full_mask(sample.veteran_steps.detections[-1], width, height)
    correction = refiner_for("mini").start(read_history(sample))
    clicks = []
    for _ in range(2):
        (x, y), positive = next_click(correction.mask, truth)
        clicks.append((x, y, positive))
        correction.click(x, y, positive)

    page = new_page()
    panel = page.locator("[data-cy=panel-content-sam_veteran_refine]")
    image = panel.locator(".js-plotly-plot .nsewdrag").first
    try:
        open_grid(page, f"{app_url}/datasets/{scenes.name}")
        page.locator("[data-cy=fo-grid] [data-cy=looker]").nth(scenes.values("id").index(sample.id)).click()
        page.click("[data-cy=panel-tab-sam_veteran_refine]", timeout=60_000)
        image.wait_for(timeout=60_000)
        panel.get_by_text(f"{stored - 1} ◀").wait_for()
        panel.get_by_text(sample.query).wait_for()
    finally:
        page.screenshot(path=ARTIFACTS / "06-refine-open.png")
    switch = panel.locator("input[type=checkbox]").first
    for i, (x, y, positive) in enumerate(clicks):
        if switch.is_checked() != positive:
            panel.get_by_text("Positive click").click()
            panel.locator(f"input[type=checkbox]{':checked' if positive else ':not(:checked)'}").first.wait_for()
        area = image.bounding_box()
        at = (area["x"] + x / width * area["width"], area["y"] + y / height * area["height"])
        page.mouse.move(*at)  # plotly reports a click on the point it hovers
        page.wait_for_timeout(300)
        page.mouse.click(*at)
        panel.get_by_text(f"{stored + i} (unsaved)").wait_for(timeout=30_000)
    page.mouse.move(area["x"], area["y"] + area["height"] + 40)  # the hover label off the clicks
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / "07-refine-two-clicks.png")

    panel.get_by_role("button", name="Save").click()
    panel.get_by_text("Saved 2 human steps.").wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "08-refine-saved.png")
    sample.reload()
    steps = sample.veteran_steps.detections
    assert len(steps) == stored + 2 and [d.source for d in steps[-2:]] == [HUMAN, HUMAN]
    assert [d.action for d in steps[-2:]] == ["positive" if c[2] else "negative" for c in clicks]
    saved = [keypoint.points[0] for keypoint in sample.veteran_clicks.keypoints[-2:]]
    for (cx, cy), (x, y, _) in zip(saved, clicks):
        assert abs(cx * width - x) <= 1 and abs(cy * height - y) <= 1  # the panel's click cells: 1 px here
    after = _full_mask(steps[-1], width, height)
    assert np.array_equal(after, correction.mask)  # what the panel saved is what the SDK computes
    r = 16
    for x, y, _ in clicks:  # the mask changed near each click
        px, py = int(x), int(y)
        assert np.count_nonzero((after ^ before)[max(py - r, 0) : py + r, max(px - r, 0) : px + r]) > 0

    panel.get_by_role("button", name="Let the agent continue").click()
    panel.get_by_text("The agent (oracle) added").wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=ARTIFACTS / "09-refine-continued.png")
    sample.reload()
    added = sample.veteran_steps.detections[stored + 2 :]
    assert added and all(d.source == AGENT for d in added) and added[0].base_step == stored + 1
    assert sample.veteran_mask.end_reason in ("agent_stopped", "step_cap")


LAYOUT_JS = """() => {
    const split = document.querySelector('[data-cy=panel-content-sam_veteran_evaluation]').getBoundingClientRect();
    const plots = [...document.querySelectorAll('[data-cy=panel-content-sam_veteran_evaluation] .js-plotly-plot')];
    const titles = [...document.querySelectorAll('[data-cy=panel-content-sam_veteran_evaluation] strong')];
    return {split: [split.left, split.right], widths: plots.map(p => p.getBoundingClientRect().width),
            plotTitles: plots.map(p => p.querySelectorAll('.gtitle').length),
            titles: titles.map(t => { const r = t.getBoundingClientRect(), box = t.parentElement;
                return {text: t.textContent, left: r.left, right: r.right, clipped: box.scrollWidth > box.clientWidth}; }),
            firstTicks: plots.map(p => (p.querySelector('.xtick text') || {}).textContent),
            legends: plots.map(p => [...p.querySelectorAll('.legendtext')].map(t => t.textContent))};
}"""


@pytest.mark.parametrize("size", [(1400, 900), (1000, 760)], ids=["default", "narrow"])
def test_the_evaluation_panel_fills_its_split(new_page, app_url, scenes, size):
    page = new_page(*size)
    open_grid(page, f"{app_url}/datasets/{scenes.name}")
    panel = page.locator("[data-cy=panel-content-sam_veteran_evaluation]")
    if not panel.count():
        page.click("[data-cy=new-panel-btn]")
        page.click("[data-cy=new-panel-option-sam_veteran_evaluation]")
    panel.locator(".js-plotly-plot").nth(2).wait_for(timeout=60_000)
    panel.get_by_role("combobox").nth(1).click()  # compare the agent with the simulated user
    page.get_by_role("option", name="oracle", exact=True).click()
    panel.get_by_text("oracle at this step").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=ARTIFACTS / f"10-evaluation-panel-{size[0]}x{size[1]}.png")

    layout = page.evaluate(LAYOUT_JS)
    left, right = layout["split"]
    assert len(layout["widths"]) == 3 and all(w >= 0.9 * (right - left) for w in layout["widths"]), layout
    assert layout["plotTitles"] == [0, 0, 0] and len(layout["titles"]) >= 3, layout
    for title in layout["titles"]:
        assert not title["clipped"] and left <= title["left"] and title["right"] <= right, title
    assert layout["firstTicks"][0] == "0" and layout["firstTicks"][2] == "0", layout
    assert {"eval gIoU", "oracle gIoU"} <= set(layout["legends"][0]), layout
