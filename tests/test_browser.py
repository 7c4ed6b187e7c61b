"""The real app in headless Chromium: `streamlit run app.py` on a free port with a temp database and a tiny
model; every page renders without an exception, the explorer's depth slider answers the keyboard, and each
page leaves a screenshot in test-artifacts/screenshots/ for a human to look at.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app_pages import seed_store

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = ROOT / "test-artifacts" / "screenshots"
# The report first: a deep link as the server's very first request (see _skeleton._leave_multipage_v1).
PAGES = {"report": "report", "explorer": "", "sweep": "sweep", "judges": "judges", "probes": "probes"}
NAV = ["Prompt explorer", "Depth sweep", "Judges", "Probes", "Report"]
WIDTH = 1440

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("needs Debian chromium + chromium-driver (`make system-deps`)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout} s")


def seeded_app(folder: Path, model_dir: Path) -> tuple[Path, Path, str, dict[str, str]]:
    """A seeded database for the tiny model in ``folder`` and the server environment pointing at it."""
    from engine.models import load_model

    db = folder / "app.duckdb"
    model_hash = load_model(str(model_dir)).info.model_hash
    seed_store(db, str(model_dir), model_hash, folder / "activations")
    env = os.environ | {
        "DEPTHSCOPE_DB": str(db),
        "DEPTHSCOPE_MODEL": str(model_dir),
        "DEPTHSCOPE_ACTIVATIONS": str(folder / "activations"),
        "HF_HUB_OFFLINE": "1",
    }
    return folder, db, model_hash, env


@contextlib.contextmanager
def serve_app(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """`streamlit run app.py` on a free port with ``env``, logging to ``folder``; yields its URL."""
    port = free_port()
    log = (folder / "streamlit.log").open("w")
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    command += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    folder, _db, _model_hash, env = seeded_app(tmp_path_factory.mktemp("browser"), tiny_model_dir)
    with serve_app(folder, env) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        f"--window-size={WIDTH},1100",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_idle(driver, timeout: float = 240, quiet_s: float = 2.0) -> None:
    """Until the page has a title and neither the 'running' status widget nor stale elements (a rerun in
    progress) were seen for a moment."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        running = driver.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget], [data-stale=true]")
        titled = driver.find_elements(By.CSS_SELECTOR, "[data-testid=stMain] h1")
        if running or not titled:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > quiet_s:
            return
        time.sleep(0.2)
    raise TimeoutError("the app did not finish rendering")


def assert_clean(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    exceptions = driver.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")
    assert not exceptions, f"{name}: {[e.text[:500] for e in exceptions]}"


def screenshot(driver, name: str) -> Path:
    """The whole main column: grow the window to the content's height first (the page itself scrolls)."""
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=stMain]'); return m ? m.scrollHeight : 1100;"
    )
    driver.set_window_size(WIDTH, min(max(int(height) + 120, 900), 7000))
    wait_idle(driver)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 1100)
    return path


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_in_chromium(server, browser, name):
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/{PAGES[name]}")
    wait_idle(browser)
    assert_clean(browser, name)
    title = browser.find_element(By.CSS_SELECTOR, "[data-testid=stMain] h1").text
    assert title, name
    sidebar = browser.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar]").text
    assert "Model" in sidebar and "Prompt set" in sidebar, f"{name}: the shared sidebar is missing"
    links = browser.find_elements(By.CSS_SELECTOR, "[data-testid=stSidebarNav] a")
    assert [link.text.splitlines()[-1] for link in links] == NAV, f"{name}: not app.py's navigation"
    assert screenshot(browser, name).stat().st_size > 10_000


def test_depth_slider_moves_with_the_keyboard(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait_idle(browser)

    def label() -> str:
        return browser.find_element(By.CSS_SELECTOR, ".st-key-depth-label").text.strip()

    assert label() == "8 / 8 layers · 100 %"
    # Streamlit 1.67's slider thumb is a visually hidden <input type=range> (react-aria): focus it, press ←.
    thumb = browser.find_element(By.CSS_SELECTOR, ".st-key-depth-8 input[type=range]")
    browser.execute_script("arguments[0].focus();", thumb)
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    WebDriverWait(browser, 180).until(lambda _: label() != "8 / 8 layers · 100 %")
    wait_idle(browser)
    assert label() == "7 / 8 layers · 88 %"
    assert_clean(browser, "explorer after the slider moved")
    screenshot(browser, "explorer-slider-moved")


def test_screenshots_are_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        ["git", "check-ignore", "-q", str(SHOTS / "explorer.png")], cwd=ROOT, capture_output=True
    )
    assert result.returncode == 0


# ---------------------------------------------------------------- hostile text stays text (issue 14)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """A server on a database whose every string field holds markup (see test_security.PAYLOAD), with
    the hostile model picked by default so the explorer shows its answers and judge badges."""
    from test_security import seed_hostile

    folder = tmp_path_factory.mktemp("browser-hostile")
    db = folder / "hostile.duckdb"
    model_id = seed_hostile(db)
    env = os.environ | {"DEPTHSCOPE_DB": str(db), "DEPTHSCOPE_MODEL": model_id, "HF_HUB_OFFLINE": "1"}
    env["DEPTHSCOPE_ACTIVATIONS"] = str(folder / "activations")
    with serve_app(folder, env) as url:
        yield url


@pytest.mark.parametrize("name", list(PAGES))
def test_hostile_database_text_renders_as_text(hostile_server, browser, name):
    """No <img>, link, bold tag, LaTeX or icon made from stored text, and no request to the payload's
    address (the browser's resource timing lists every fetch it tried)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{hostile_server}/{PAGES[name]}")
    wait_idle(browser)
    assert_clean(browser, name)
    main = browser.find_element(By.CSS_SELECTOR, "[data-testid=stAppViewContainer]")
    images = [img.get_attribute("src") or "" for img in main.find_elements(By.TAG_NAME, "img")]
    assert not [src for src in images if "127.0.0.1:9" in src], f"{name}: {images}"
    links = [a.get_attribute("href") or "" for a in main.find_elements(By.TAG_NAME, "a")]
    assert not [href for href in links if "127.0.0.1:9" in href], f"{name}: {links}"
    assert not [b for b in main.find_elements(By.TAG_NAME, "b") if b.text == "bold"], name
    assert not main.find_elements(By.CSS_SELECTOR, ".katex"), f"{name}: stored text became LaTeX"
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in fetched if "127.0.0.1:9" in url], f"{name}: {fetched}"
    if name == "explorer":  # the payload is there, as text (completion and escaped judge badge)
        assert "![x](http://127.0.0.1:9/b.png)" in main.text


# ---------------------------------------------------------------- early exit (issue 15)


@pytest.fixture(scope="module")
def exit_server(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """A server on a database with static and dynamic-exit completions (see test_app_pages.seed_exits)."""
    from test_app_pages import seed_exits

    folder, db, model_hash, env = seeded_app(tmp_path_factory.mktemp("browser-exits"), tiny_model_dir)
    seed_exits(db, model_hash, tiny_tokenizer, folder / "lenses")
    with serve_app(folder, env) as url:
        yield url


def test_exit_chart_and_token_colouring_render(exit_server, browser):
    """The Report's compute-used chart draws its curves; the explorer, with the confidence policy picked in
    the sidebar, colours every token by its exit layer and shows hostile token text as characters."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from test_app_pages import EXIT_TEXT

    browser.get(f"{exit_server}/report")
    wait_idle(browser)
    assert_clean(browser, "report with early exit")
    boxes = browser.find_elements(By.CSS_SELECTOR, ".st-key-compute-chart-box")
    assert boxes, browser.find_element(By.CSS_SELECTOR, "[data-testid=stMain]").text[:3000]
    box = boxes[0]
    WebDriverWait(browser, 180).until(
        lambda _: box.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")
    )
    traces = box.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace")
    assert len(traces) >= 4, len(traces)  # static, confidence raw/tuned, saturation (+ dashed benign)
    screenshot(browser, "report-compute")

    browser.get(exit_server)
    wait_idle(browser)
    sidebar = browser.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar]")
    summary = next(e for e in sidebar.find_elements(By.TAG_NAME, "summary") if "Settings" in e.text)
    summary.click()
    WebDriverWait(browser, 180).until(
        lambda _: browser.find_element(By.CSS_SELECTOR, ".st-key-exit_policy input")
    )

    def pick_confidence(_) -> bool:
        """Streamlit 1.67's selectbox is a react-aria combobox: ↓ opens its list once it is ready; the
        list re-renders while it opens, so a click may land on a stale option: try again."""
        try:
            found = [
                o for o in browser.find_elements(By.CSS_SELECTOR, "[role=option]") if "confidence" in o.text
            ]
            if not found:  # the input is found again each time: a rerun replaces it
                box = browser.find_element(By.CSS_SELECTOR, ".st-key-exit_policy input")
                browser.execute_script("arguments[0].scrollIntoView(); arguments[0].focus();", box)
                box.send_keys(Keys.ARROW_DOWN)
                return False
            found[0].click()
            return True
        except WebDriverException:
            return False

    WebDriverWait(browser, 180, poll_frequency=1.0).until(pick_confidence)
    strip = WebDriverWait(browser, 180).until(
        lambda _: browser.find_element(By.CSS_SELECTOR, ".st-key-exit-strip .depthscope-exit-strip")
    )
    wait_idle(browser)
    assert_clean(browser, "explorer with early exit")
    strip = browser.find_element(By.CSS_SELECTOR, ".st-key-exit-strip .depthscope-exit-strip")
    spans = strip.find_elements(By.CSS_SELECTOR, "span[title^=token]")
    assert len(spans) > 3
    backgrounds = {s.value_of_css_property("background-color") for s in spans}
    assert len(backgrounds) > 1  # tokens left at different layers, in different colours
    assert strip.text == EXIT_TEXT  # <img src=x>, ![x](y), $x$ as characters
    assert not strip.find_elements(By.TAG_NAME, "img") and not strip.find_elements(By.CSS_SELECTOR, ".katex")
    screenshot(browser, "explorer-exit-colours")
