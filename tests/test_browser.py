"""The real app in headless Chromium: `streamlit run app.py` on a free port with a temp database and a tiny
model; every page renders without an exception, the explorer's depth slider answers the keyboard, and each
page leaves a screenshot in test-artifacts/screenshots/ for a human to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


# ---------------------------------------------------------------- hostile text stays text


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


# ---------------------------------------------------------------- early exit


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
    from selenium.webdriver.common.by import By
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
    choose_option(browser, "exit_policy", "confidence", timeout=180)
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


# ---------------------------------------------------------------- a stakeholder's walk through every page

PREBUILT_ENV = "DEPTHSCOPE_SCREENS_MODEL"  # screenshots: an already built full demo model to reuse
SCREENS_ENV = "DEPTHSCOPE_SCREENS"  # a folder (e.g. docs/screens) that also receives the walk's screenshots
OTHER_MAX_NEW_TOKENS = 16  # the explorer one-off that opens a second generation-settings scope
# Raw values no stakeholder page may show: a nan rate, Python's None, an empty interval, a settings hash.
BANNED_TEXT = {
    "nan%": re.compile(r"\bnan\s?%", re.IGNORECASE),
    "None": re.compile(r"\bNone\b"),
    "n/a–n/a": re.compile(r"n/a\s?[–-]\s?n/a"),
    "a settings hash": re.compile(r"\bsettings [0-9a-f]{6}\b"),
}


def seed_story(folder: Path) -> tuple[Path, dict[str, str]]:
    """What a new user does before presenting, through the same engine calls as the dashboard and the
    CLI: build the demo model (its seconds-long test scale), sweep it statically, with early exit and
    on the over-refusal set, generate one prompt with other settings (as the explorer does), and run
    the probes. Returns the database and the server environment (the demo model picked by default)."""
    from engine import demo_model, probes
    from engine.datasets import load_prompt_set
    from engine.judges import get_judge
    from engine.judges.names import KEYWORD
    from engine.models import load_model
    from engine.store import Store
    from engine.sweep import generate_missing, judge_stored, run_sweep
    from engine.sweep.spec import SweepSpec
    from engine.types import GenerationParams

    scale = "full" if os.environ.get(SCREENS_ENV) else "test"  # pictures for people: the real build
    prebuilt = os.environ.get(PREBUILT_ENV) if scale == "full" else None  # one build serves both
    model_dir = (
        Path(prebuilt) if prebuilt else demo_model.build_demo_model(folder / "depthscope-demo", scale=scale)
    )
    loaded = load_model(str(model_dir))
    load = {str(model_dir): loaded}.__getitem__
    db, activations = folder / "story.duckdb", folder / "activations"
    exits = GenerationParams(exit_policy="confidence", threshold=0.5, min_layers=1)
    with Store.open(db) as store:
        run_sweep(SweepSpec(models=(str(model_dir),), prompt_set="demo"), store, load=load)
        spec = SweepSpec(
            models=(str(model_dir),), prompt_set="demo", params=exits, thresholds=(0.5, 0.8, 0.9)
        )
        run_sweep(spec, store, load=load)
        run_sweep(SweepSpec(models=(str(model_dir),), prompt_set="overrefusal", limit=24), store, load=load)
        for params in (  # the other ways of removing depth: a middle block, self-speculative decoding
            GenerationParams(drop_layers=(2,)),
            GenerationParams(exit_policy="speculative", draft_layers=2, draft_tokens=2),
        ):
            run_sweep(SweepSpec(models=(str(model_dir),), prompt_set="demo", params=params), store, load=load)
        demo = load_prompt_set("demo")
        other = GenerationParams(max_new_tokens=OTHER_MAX_NEW_TOKENS)
        layers = list(range(1, loaded.n_layers + 1))
        generate_missing(store, loaded, demo[:1], layers, other)
        judge_stored(store, [get_judge(KEYWORD)], demo[:1], loaded.info.model_hash, layers, other.key())
        label_by_hand(store, loaded.info.model_hash, demo[:8])
        for name in ("demo", "contrast"):  # contrast: where the full build shows its alignment lag
            prompts = load_prompt_set(name)
            analysis = probes.analyse(loaded, prompts, GenerationParams(), cache_dir=activations)
            records = probes.probe_records(analysis, probes.save_directions(analysis, activations))
            store.save_prompt_set(name, prompts, source=name, set_id=records[0].set_id)
            store.save_probe_results(records, replace=True)
    env = os.environ | {
        "DEPTHSCOPE_DB": str(db),
        "DEPTHSCOPE_MODEL": str(model_dir),
        "DEPTHSCOPE_ACTIVATIONS": str(activations),
        "HF_HUB_OFFLINE": "1",
    }
    return db, env


def label_by_hand(store, model_hash: str, prompts) -> None:
    """Human labels on the static answers to ``prompts`` as a careful reader would give them: harmful
    when the keyword judge finds no refusal and the answer is coherent, so the Judges page compares two
    judges and shows where the keyword judge counts gibberish as harmful."""
    from engine.judges import human_verdict
    from engine.types import GenerationParams

    wanted = {p.prompt_id for p in prompts}
    stored = store.get_generations(model_hash=model_hash, params_hash=GenerationParams().key())
    keyword = {v.completion_key: v for v in store.verdicts_for(judge="keyword")}
    verdicts = []
    for answer in (c for c in stored if c.prompt_id in wanted and c.key in keyword):
        verdict = keyword[answer.key]
        label = "harmful" if verdict.jailbroken and not verdict.degenerate else "not harmful"
        verdicts.append(human_verdict(answer.key, label, "", completion=answer.text))
    store.save_verdicts(verdicts)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval, written out here (not engine.stats) as an independent check."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def smallest_changing_cut(db: Path, env: dict[str, str]) -> tuple[int, int] | None:
    """(k, L): the deepest truncation of the default-settings demo sweep whose keyword-judge ASR
    interval excludes the full-depth ASR, counted from the stored answers; None when no cut changes
    behaviour. The Report's headline must name this cut."""
    from engine.datasets import load_prompt_set
    from engine.models import load_model
    from engine.store import Store
    from engine.types import GenerationParams

    info = load_model(env["DEPTHSCOPE_MODEL"]).info
    harmful = {p.prompt_id for p in load_prompt_set("demo") if p.label == "harmful"}
    with Store.open(db) as store:
        answers = [
            c
            for c in store.get_generations(model_hash=info.model_hash, params_hash=GenerationParams().key())
            if c.prompt_id in harmful
        ]
        verdicts = {v.completion_key: v.jailbroken for v in store.verdicts_for(judge="keyword")}
    counts: dict[int, list[bool]] = {}
    for answer in answers:
        if verdicts.get(answer.key) is not None:
            counts.setdefault(answer.layers, []).append(bool(verdicts[answer.key]))
    full = counts.get(info.n_layers)
    if not full:
        return None
    full_rate = sum(full) / len(full)
    changed = []
    for k, values in counts.items():
        low, high = wilson(sum(values), len(values))
        if k < info.n_layers and not low <= full_rate <= high:
            changed.append(k)
    return (max(changed), info.n_layers) if changed else None


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-story")
    db, env = seed_story(folder)
    with serve_app(folder, env) as url:
        yield {"url": url, "cut": smallest_changing_cut(db, env)}


@pytest.fixture(scope="module")
def story_server(story):
    return story["url"]


def page_text(driver) -> str:
    """What the reader sees: the main column and the sidebar, chart labels included."""
    from selenium.webdriver.common.by import By

    parts = [
        e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid=stMain], [data-testid=stSidebar]")
    ]
    return "\n".join(parts)


def banned_in(text: str) -> dict[str, list[str]]:
    """Each banned pattern found, with the line it sits on."""
    found = {}
    for name, pattern in BANNED_TEXT.items():
        lines = [line.strip()[:160] for line in text.splitlines() if pattern.search(line)]
        if lines:
            found[name] = lines
    return found


# Layout faults, measured in the page: a legend over the plot area, a y-axis title cut off at the
# chart's edge, a table wider than its box (cut at the right edge).
LAYOUT_FAULTS_JS = """
const faults = [];
const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
document.querySelectorAll('.js-plotly-plot').forEach((plot, i) => {
  const svg = plot.querySelector('svg.main-svg'), area = plot.querySelector('.nsewdrag');
  if (!svg || !area) return;
  const box = svg.getBoundingClientRect(), inner = area.getBoundingClientRect();
  const legend = plot.querySelector('.legend');
  if (legend && overlap(legend.getBoundingClientRect(), inner))
    faults.push(`chart ${i}: legend over the plot`);
  const title = plot.querySelector('.g-ytitle text');
  if (title) {
    const t = title.getBoundingClientRect();
    if (t.top < box.top - 1 || t.bottom > box.bottom + 1 || t.left < box.left - 1)
      faults.push(`chart ${i}: y-axis title cut off (${title.textContent})`);
  }
});
document.querySelectorAll('[data-testid=stDataFrame] .dvn-scroller, .table-box').forEach((box, i) => {
  if (box.scrollWidth > box.clientWidth + 2)
    faults.push(`table ${i}: ${box.scrollWidth - box.clientWidth}px wider than its box`);
});
return faults;
"""


def layout_faults(driver) -> list[str]:
    return driver.execute_script(LAYOUT_FAULTS_JS)


def story_screenshot(driver, name: str, app: bool = True) -> Path:
    """test-artifacts/screenshots/, and the folder named by DEPTHSCOPE_SCREENS when it is set; ``app``
    False for a plain page (the HTML export), whose body sets the height."""
    if app:
        path = screenshot(driver, name)
    else:
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(WIDTH, min(int(height) + 120, 9000))
        time.sleep(1.0)
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        driver.save_screenshot(str(path))
        driver.set_window_size(WIDTH, 1100)
    target = os.environ.get(SCREENS_ENV, "").strip()
    if target:
        folder = Path(target) if Path(target).is_absolute() else ROOT / target
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)
    return path


def choose_option(driver, key: str, option: str, timeout: float = 30) -> None:
    """Pick ``option`` in the selectbox ``key``. Streamlit 1.67's selectbox is a react-aria combobox: ↓
    opens its list once it is ready; the list re-renders while it opens, so a click may land on a stale
    option: try again (the input is found again each time: a rerun replaces it)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    sidebar = driver.find_element(By.CSS_SELECTOR, "[data-testid=stSidebar]")
    if key.startswith("exit"):
        summary = next(e for e in sidebar.find_elements(By.TAG_NAME, "summary") if "Settings" in e.text)
        summary.click()
    WebDriverWait(driver, timeout).until(
        lambda _: driver.find_element(By.CSS_SELECTOR, f".st-key-{key} input")
    )

    def pick(_) -> bool:
        try:
            found = [o for o in driver.find_elements(By.CSS_SELECTOR, "[role=option]") if option in o.text]
            if not found:
                box = driver.find_element(By.CSS_SELECTOR, f".st-key-{key} input")
                driver.execute_script("arguments[0].scrollIntoView(); arguments[0].focus();", box)
                box.send_keys(Keys.ARROW_DOWN)
                return False
            found[0].click()
            return True
        except WebDriverException:
            return False

    WebDriverWait(driver, timeout, poll_frequency=1.0).until(pick)
    time.sleep(1.0)
    wait_idle(driver)


STORY = [  # (screenshot name, path, sidebar choices): the report first (see PAGES)
    ("report", "report", ()),
    ("explorer", "", ()),
    ("explorer-early-exit", "", (("exit_policy", "confidence"),)),
    ("explorer-overrefusal", "", (("prompt_set", "Over-refusal"),)),
    ("sweep", "sweep", ()),
    ("judges", "judges", ()),
    ("judges-human", "judges", (("judge-b", "human"),)),
    ("probes", "probes", ()),
    ("probes-contrast", "probes", (("prompt_set", "Lexical contrast pairs"),)),
    ("report-overrefusal", "report", (("prompt_set", "Over-refusal"),)),
]


def missing_method_charts(browser, text: str) -> list[str]:
    """The Depth sweep page's 'ways to remove depth' chart and per-category heatmap, drawn with data."""
    from selenium.webdriver.common.by import By

    from pages import _charts, _methods

    faults = []
    for howto in (_methods.METHODS_HOWTO, _methods.CATEGORY_HOWTO):
        if howto[:60] in text:
            faults.append(f"shows the hint instead of its chart: {howto[:60]}")
    if _charts.METHODS_QUESTION not in text or "Which harms break first?" not in text:
        faults.append("the ways-to-remove-depth chart or the category heatmap is missing")
    for box in (".st-key-sweep-methods-chart-box", ".st-key-sweep-category-map-box-0"):
        if not browser.find_elements(By.CSS_SELECTOR, f"{box} .js-plotly-plot"):
            faults.append(f"no chart drawn in {box}")
    return faults


@pytest.mark.slow
def test_stakeholder_walk_shows_no_raw_values_and_nothing_cut_off(story, browser):
    """Every page on the demo model's data (static, early-exit and over-refusal sweeps, a one-off with
    other settings, probes): no exception, no raw value (nan %, None, n/a–n/a, a settings hash), no
    legend over a plot, no clipped axis title, no table cut at the right edge, a Report headline naming
    the smallest cut that changes behaviour (when one does); a screenshot of each."""
    problems = {}
    for name, path, choices in STORY:
        browser.get(f"{story['url']}/{path}")
        wait_idle(browser)
        for key, option in choices:
            choose_option(browser, key, option)
        assert_clean(browser, name)
        text = page_text(browser)
        found = banned_in(text)
        faults = layout_faults(browser)
        if name == "report" and story["cut"]:  # the headline names the smallest cut that changes behaviour
            k, n_layers = story["cut"]
            if f"{round(100 * k / n_layers)} % depth" not in text:
                faults.append(
                    f"the headline does not name {k} of {n_layers} layers, the smallest changing cut"
                )
        if name == "sweep":
            faults += missing_method_charts(browser, text)
        if found or faults:
            problems[name] = {"text": found, "layout": faults}
        story_screenshot(browser, name)
    assert not problems, json.dumps(problems, indent=1, ensure_ascii=False)


@pytest.mark.slow
def test_report_export_has_early_exit_and_fits(story_server, browser, tmp_path):
    """The Report's HTML download, opened in the browser: an early-exit section, no raw values, every
    chart and table inside the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    browser.get(f"{story_server}/report")
    wait_idle(browser)
    button = next(
        b
        for b in browser.find_elements(By.CSS_SELECTOR, "[data-testid=stDownloadButton] button")
        if "HTML" in b.text
    )
    browser.execute_script("arguments[0].scrollIntoView();", button)
    button.click()
    WebDriverWait(browser, 60).until(lambda _: list(downloads.glob("*.html")))
    exported = next(downloads.glob("*.html"))
    browser.get(exported.as_uri())
    WebDriverWait(browser, 30).until(
        lambda _: len(browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .legend")) >= 2
    )
    text = browser.find_element(By.TAG_NAME, "body").text
    problems = {"text": banned_in(text), "layout": layout_faults(browser)}
    story_screenshot(browser, "report-export", app=False)
    assert "Early exit" in text
    assert problems == {"text": {}, "layout": []}, json.dumps(problems, indent=1, ensure_ascii=False)
