"""The FiftyOne App in a real browser: find *SAM-Veteran: Run agent* in the operator browser, run it, see the new fields.

Debian's Chromium driven by Playwright (never `playwright install`: it downloads). Screenshots go to
test-artifacts/browser/. With CI=true a missing Chromium fails the test; elsewhere it is skipped with the reason.
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
import pytest

from sam_veteran.plugin.agent import Agent, AgentConfig, OraclePolicy, load_segmenter
from sam_veteran.plugin.demo import build_demo_dataset
from sam_veteran.plugin.inference import run_agent
from sam_veteran.plugin.model import SamVeteranModel

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


@pytest.fixture
def scenes(tmp_path):
    """Four demo scenes with real results under `veteran`: the simulated user (the ground truth's box, then the
    protocol's clicks) driving the shipped mini segmenter."""
    name = f"browser-scenes-{uuid.uuid4().hex[:8]}"  # the database may be shared with other test sessions
    dataset = build_demo_dataset(tmp_path / "scenes", num_samples=4, name=name)
    agent = Agent(OraclePolicy(stop_iou=0.95), load_segmenter("mini", device="cpu"), AgentConfig(max_steps=2))
    run_agent(dataset, SamVeteranModel(agent=agent))
    yield dataset
    dataset.delete()


@pytest.fixture
def app_url(installed_plugin, scenes):
    """The App server on a free local port, ended by its PID."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "app-server.log", "w")
    server = subprocess.Popen([sys.executable, fiftyone.server.main.__file__, "--port", str(port),
                               "--address", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT)
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


def test_run_sam_veteran_from_the_operator_browser(chromium, app_url, scenes, tiny_models):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_init_script("localStorage.setItem('fiftyone-enterprise-tooltip-seen', 'true')")
            page.goto(f"{app_url}/datasets/{scenes.name}")
            page.wait_for_selector("[data-cy=fo-grid] [data-cy=looker] canvas", timeout=60_000)
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
        finally:
            browser.close()

    scenes.reload()
    assert scenes.exists("tiny_mask").count() == 4
    assert all(m.mask.shape == (s.metadata.height, s.metadata.width)
               for s, m in zip(scenes, scenes.values("tiny_mask")))
    assert isinstance(scenes.get_field("tiny_steps").document_type(), fo.Detections)
