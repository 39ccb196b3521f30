"""A real browser (headless Debian chromium via Selenium) uploads a synthetic fundus and sees the grade.

The fixture installs the apt packages ``chromium`` and ``chromium-driver`` when they are missing (CI runs
as root with Debian's registry); where that is impossible the test is skipped with the reason.
The screenshot is saved to ``artifacts/browser_analyze.png`` as a test artifact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from workbench.synthetic import make_fundus
from workbench.ui.gradio_app import build_demo

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1400,2400",
)


def _ensure_chromium() -> None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0:
        pytest.skip("chromium/chromedriver missing and not root to apt-get install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            pytest.skip(f"could not install chromium: {result.stderr[-300:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='drwb-chromium-')}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory, tiny_workbench) -> Iterator[str]:
    demo = build_demo(tiny_workbench, str(tmp_path_factory.mktemp("examples")))
    demo.queue(max_size=8).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


def test_upload_analyze_and_see_grade(browser, app_url: str, tmp_path: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "synthetic_fundus.png"
    Image.fromarray(make_fundus(9, size=(712, 1072), dr_grade=3, dme_grade=2).image).save(image)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser_analyze.png"
    browser.get(app_url)
    wait = WebDriverWait(browser, 180)  # generous: CI shares 2 cores with other tests
    try:
        file_input = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        file_input.send_keys(str(image))
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'synthetic_fundus')]")))
        grade = (By.XPATH, "//*[@id='analysis-summary']//*[contains(text(), 'DR grade')]")
        summary = None
        # A click that lands while the upload is still being registered is answered with "No image
        # uploaded"; a user would click again, and so does the test (at most three times).
        for _ in range(3):
            button = wait.until(ec.element_to_be_clickable((By.ID, "analyze-button")))
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
            button.click()  # a native click: a script-dispatched click does not reach Gradio's handler
            try:
                summary = WebDriverWait(browser, 20).until(ec.presence_of_element_located(grade))
                break
            except TimeoutException:
                continue
        assert summary is not None, browser.find_element(By.TAG_NAME, "body").text[:600]
    finally:
        browser.save_screenshot(str(screenshot))
    assert "DR grade" in summary.text
    assert screenshot.stat().st_size > 10_000


def test_audit_report_opens_offline_with_its_plots(browser, tiny_workbench, tmp_path: Path) -> None:
    """The self-contained audit HTML renders its Plotly charts from the file alone (no network)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from workbench.audit import read_labels, run_audit, write_audit_report

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        fundus = make_fundus(20 + i, size=(356, 536), dr_grade=i % 5, dme_grade=0)
        Image.fromarray(fundus.image).save(folder / f"p{i}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("image,level\n" + "".join(f"p{i},{(i + 1) % 5}\n" for i in range(5)))
    figures, graded, overlays = run_audit(tiny_workbench, read_labels(labels, folder))
    html = write_audit_report(figures, graded, overlays, tmp_path / "out", tmp_path / "out" / "audit.html")[
        "html"
    ]
    browser.get(html.as_uri())
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 4)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser_audit_report.png"))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Referable DR operating points" in body and "Worst errors" in body
    assert len(browser.find_elements(By.CSS_SELECTOR, ".main-svg")) >= 4  # the charts really drew


def test_a_bad_upload_is_named_once_and_leaves_no_error_badges(browser, app_url: str, tmp_path: Path) -> None:
    """A text file renamed .jpg: named at upload (no preview) and on Analyze, by the upload box, while
    the output panels show no "Error" badge (the event's validator stops it before anything runs)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photograph\n" * 20)
    browser.get(app_url)
    wait = WebDriverWait(browser, 120)
    file_input = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    file_input.send_keys(str(bad))
    wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'notes.jpg')]")))
    message = "not a recognised image"
    wait.until(lambda d: message in d.find_element(By.TAG_NAME, "body").text)  # the upload warning
    button = wait.until(ec.element_to_be_clickable((By.ID, "analyze-button")))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()
    flagged = "//*[contains(@class, 'validation') or contains(@class, 'error')]"
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.XPATH, flagged) or message in d.find_element(By.TAG_NAME, "body").text
    )
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser_bad_upload.png"))
    badges = [
        e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Error']") if e.is_displayed()
    ]
    assert not badges, [b.get_attribute("outerHTML")[:200] for b in badges]
    assert browser.find_element(By.ID, "analysis-summary").text.strip() == ""  # nothing ran


TABS = ("Analyze", "Compare explanations", "Batch", "Audit", "Models", "Inspect")


def test_every_tab_at_1500_px_and_analyze_stacked_at_420_px(browser, app_url: str, tmp_path: Path) -> None:
    """A screenshot per tab at 1500 px (artifacts/tab_*_1500.png), the Models table's columns, and at 420
    px the Analyze tab's lesion and landmark panels stacked rather than squeezed side by side."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(exist_ok=True)
    try:
        browser.set_window_size(1500, 1600)
        browser.get(app_url)
        wait = WebDriverWait(browser, 120)
        for name in TABS:
            button = wait.until(
                lambda d, n=name: next(
                    (b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == n),
                    None,
                )
            )
            button.click()
            wait.until(lambda d, b=button: b.get_attribute("aria-selected") == "true")
            browser.save_screenshot(str(ARTIFACTS / f"tab_{name.split()[0].lower()}_1500.png"))
            if name == "Models":
                headers = [h.text for h in browser.find_elements(By.TAG_NAME, "th") if h.is_displayed()]
                assert {"DR accuracy", "DR QWK", "referable AUC", "MA", "disc mean"} <= set(headers), headers
        browser.set_window_size(420, 1600)
        browser.get(app_url)
        lesions = wait.until(lambda d: d.find_element(By.ID, "lesions-panel"))
        landmarks = browser.find_element(By.ID, "landmarks-panel")
        browser.save_screenshot(str(ARTIFACTS / "tab_analyze_420.png"))
        assert landmarks.rect["y"] >= lesions.rect["y"] + lesions.rect["height"] - 2  # stacked
        assert lesions.rect["width"] >= 300  # not squeezed to ~170 px
    finally:
        browser.set_window_size(1400, 2400)
