"""Security: nothing written outside the allowed folders by any page action; one base for
relative paths, and the path checked is the path loaded; no text from a database, a CSV or a path box is
ever read as markdown, HTML, LaTeX or an icon shortcode by a page or a chart.

Each test drives the real app with AppTest (see test_app_pages.py for the fixtures).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import test_app_pages
from google.protobuf.json_format import MessageToDict

from engine import paths
from engine.datasets import load_prompt_set, parse_csv, prompt_set_id, upload_display_name
from engine.judges import get_judge, human_verdict
from engine.judges.base import JudgeItem
from engine.models import ModelLoadError
from engine.store import ProbeRecord, Store
from engine.types import Completion, GenerationParams, ModelInfo, Verdict
from pages import _charts, _display, _jobs, _store

# the page fixtures of test_app_pages (temp database, tiny model, navigation through app.py)
app_env, navigation_only, tiny_hash = (
    test_app_pages.app_env,
    test_app_pages.navigation_only,
    test_app_pages.tiny_hash,
)
open_page = test_app_pages.open_page

# A value for every string field: a remote image, an HTML image and tag, a link, LaTeX, icon shortcodes.
PAYLOAD = (
    "![x](http://127.0.0.1:9/b.png)<img src=http://127.0.0.1:9/i.png><b>bold</b>"
    "[link](http://127.0.0.1:9/l)$\\sqrt{2}$:material/warning::smile:"
)
# What must never reach markdown unescaped (each is broken by md_escape, plot_text or mpl_text).
RAW_MARKUP = ("![x]", "<img", "<b>", "[link](", "$\\sqrt", ":material/warning:", ":smile:")


def unescaped(text: str) -> list[str]:
    """The RAW_MARKUP pieces present in ``text`` without a backslash before them."""
    return [m for m in RAW_MARKUP if re.search(r"(?<!\\)" + re.escape(m), text)]


SIMPLE_CSV = b"prompt,label\n" + b"".join(
    f"Question {i}?,{'harmful' if i % 2 else 'benign'}\n".encode() for i in range(8)
)


# ---------------------------------------------------------------- helpers


def listing(root: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """Every file and folder under root (relative names), leaving out the named top-level folders."""
    found = set()
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in skip]
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found |= {str(rel / name) for name in [*dirs, *files]}
    return found


def _nodes(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# Elements whose content Streamlit shows as plain text: only their label and help are markdown.
PLAIN_CONTENT = {
    "text",
    "code",
    "arrow_data_frame",
    "selectbox",
    "multiselect",
    "text_input",
    "text_area",
    "file_uploader",
    "number_input",
    "plotly_chart",
    "download_button",
}


def markup_strings(at) -> list[str]:
    """Every string of the rendered page that Streamlit reads as markdown: markdown, captions, alerts,
    titles, toasts, and every widget's label, help and (radio, segmented control) options."""
    found = []
    for node in _nodes(at._tree):
        proto = getattr(node, "proto", None)
        if proto is None or not hasattr(proto, "DESCRIPTOR"):
            continue
        fields = MessageToDict(proto)
        if node.type in PLAIN_CONTENT:
            found += [fields.get("label", ""), fields.get("help", "")]
        else:
            found += _strings(fields)
    return [s for s in found if s]


def chart_strings(at) -> list[str]:
    return [chart.proto.spec for chart in at.get("plotly_chart")]


def assert_no_raw_markup(at, where: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    for text in markup_strings(at):
        leaked = unescaped(text)
        assert not leaked, f"{where}: {leaked} unescaped in {text[:300]!r}"
    for spec in chart_strings(at):
        leaked = [m for m in ("<img", "<b>", "$\\\\sqrt", "<a ") if m in spec]
        assert not leaked, f"{where}: chart carries {leaked}"


# ---------------------------------------------------------------- 3. plain text everywhere


def hostile_csv() -> bytes:
    rows = [
        "id,prompt,label,category",
        f'"{PAYLOAD}-1","{PAYLOAD} harmful?",harmful,"{PAYLOAD}"',
        f'"{PAYLOAD}-2","{PAYLOAD} benign?",benign,"{PAYLOAD}"',
    ]
    return "\n".join(rows).encode()


def seed_hostile(db: Path) -> str:
    """A database whose every string field holds PAYLOAD: model names, architecture, dtype, device, set
    name and source, prompt ids, categories, completions, judge names and versions, raw outputs, notes,
    human notes, probe methods. The first two demo prompts are answered too (what a browser shows by
    default). Returns the hostile model id."""
    prompts = parse_csv(hostile_csv(), filename="x.csv") + load_prompt_set("demo")[:2]
    params = GenerationParams()
    keyword = get_judge("keyword")
    with Store.open(db) as store:
        store.save_prompt_set(PAYLOAD, prompts, source=PAYLOAD)
        for index in (1, 2):
            model_id, model_hash = f"{PAYLOAD}-model{index}", f"hostilehash{index}"
            store.save_model(ModelInfo(model_id, model_hash, PAYLOAD, 8, 64, PAYLOAD, PAYLOAD))
            completions = [
                Completion(model_hash, p.prompt_id, p.text, k, params.key(), f"{PAYLOAD} at {k}")
                for p in prompts
                for k in (4, 6, 7, 8)
            ]
            store.save_generations(completions, params=params)
            store.save_verdicts(keyword.judge([JudgeItem(c.key, c.prompt_text, c.text) for c in completions]))
            store.save_verdicts(
                [
                    Verdict(c.key, PAYLOAD, PAYLOAD, (i + index) % 2 == 0, raw=PAYLOAD, note=PAYLOAD)
                    for i, c in enumerate(completions)
                ]
            )
            store.save_verdicts([human_verdict(completions[0].key, "harmful", PAYLOAD)])
        set_id = prompt_set_id(prompts)
        store.save_probe_results(
            ProbeRecord(
                "hostilehash1", set_id, layer, method, 0.5 + 0.05 * layer, 0.01, 0.5, {"note": PAYLOAD}
            )
            for layer in range(9)
            for method in ("logreg", PAYLOAD)
        )
    return f"{PAYLOAD}-model1"


@pytest.fixture
def hostile(app_env, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "data")  # uploads land here, not in the checkout
    app_env["model_id"] = seed_hostile(app_env["db"])
    return app_env


def _pick_hostile(at, model_id: str) -> None:
    at.sidebar.file_uploader(key="upload").set_value((f"{PAYLOAD}.csv", hostile_csv(), "text/csv")).run()
    at.sidebar.selectbox(key="model_choice").set_value(model_id).run()
    assert not at.exception, [e.value for e in at.exception]


def test_no_stored_string_is_read_as_markup_on_any_page(hostile):
    at = open_page("explorer")
    _pick_hostile(at, hostile["model_id"])
    assert at.sidebar.selectbox(key="prompt_set").value.endswith(".csv")
    assert any(PAYLOAD in t for t in (e.value for e in at.text))  # the completion itself, as plain text
    assert any("\\!\\[x\\]" in m for m in markup_strings(at))  # the judge badge, escaped
    assert_no_raw_markup(at, "explorer")

    at.switch_page("pages/sweep.py").run()
    assert_no_raw_markup(at, "sweep")
    # The sidebar shows the uploaded set; the hostile database's results belong to its own (hostile) set.
    at.radio(key="sweep-scope").set_value("all sets").run()
    assert_no_raw_markup(at, "sweep, all sets")
    at.get("button_group")[0].set_value(PAYLOAD).run()  # the segmented control: that judge's curves
    assert at.get("button_group")[0].value == PAYLOAD
    assert_no_raw_markup(at, "sweep, hostile judge")

    at.switch_page("pages/judges.py").run()
    assert_no_raw_markup(at, "judges")
    at.selectbox(key="judge-a").set_value(PAYLOAD).run()
    at.selectbox(key="judge-b").set_value("keyword").run()
    at.radio(key="judges-scope").set_value("all sets").run()
    assert any(m.label == "Kappa" for m in at.metric)
    assert_no_raw_markup(at, "judges, hostile judge")

    at.switch_page("pages/probes.py").run()
    assert_no_raw_markup(at, "probes")

    at.switch_page("pages/report.py").run()
    assert_no_raw_markup(at, "report")
    at.radio(key="report-scope").set_value("all sets").run()
    assert_no_raw_markup(at, "report, all sets")  # (its judge radio offers only harmbench and keyword here)


def test_escapes_hold_for_every_payload_kind():
    escaped = _display.md_escape(PAYLOAD)
    assert not unescaped(escaped)
    assert unescaped(PAYLOAD) == list(RAW_MARKUP)
    assert "&lt;img" in _charts.plot_text(PAYLOAD) and "$" not in _charts.plot_text(PAYLOAD)
    assert _charts.mpl_text("$x$") == r"\$x\$"


def test_report_chart_png_with_latex_in_a_model_name(hostile):
    from engine import report as engine_report

    with Store.open(hostile["db"], read_only=True) as store:
        frame = engine_report.asr_frame(engine_report.asr_rows(store, "keyword"))
    frame["model"] = "$\\unknowncommand{x}$"  # matplotlib read this as math and raised ParseFatalException
    assert _charts.asr_png(frame).startswith(b"\x89PNG")


# ---------------------------------------------------------------- 1. nothing written outside


def test_upload_lands_in_data_uploads_even_when_the_database_box_points_elsewhere(
    app_env, monkeypatch, tmp_path, tmp_path_factory
):
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "data")
    outside = tmp_path_factory.mktemp("outside")
    at = open_page("explorer")
    at.sidebar.text_input(key="db").input(str(outside / "sub" / "evil.duckdb")).run()
    assert any("outside the folders" in str(e.value) for e in at.error)
    for name in ("../../escape.csv", "..\\..\\win.csv", "/etc/abs.csv"):
        at.sidebar.file_uploader(key="upload").set_value((name, SIMPLE_CSV, "text/csv")).run()
        assert not at.exception
    assert listing(outside) == set()
    saved = sorted(upload_display_name(p.name) for p in (tmp_path / "data" / "uploads").iterdir())
    assert saved == ["abs.csv", "escape.csv", "win.csv"]  # each name made unique by its content
    chosen = Path(at.sidebar.selectbox(key="prompt_set").value)
    assert chosen.parent == tmp_path / "data" / "uploads" and upload_display_name(chosen.name) == "abs.csv"


def test_no_page_action_creates_anything_outside_the_allowed_folders(
    app_env, monkeypatch, tmp_path, tmp_path_factory
):
    """Every page visited with a refused database, then every button pressed with a refused model path,
    a refused classifier folder and an upload: the refused folders, the server's working folder and the
    checkout (but data/) stay as they were, and whatever appeared under tmp_path is in an allowed folder."""
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path / "data")
    outside = tmp_path_factory.mktemp("outside")
    work = tmp_path_factory.mktemp("server-cwd")
    monkeypatch.chdir(work)
    repo_before = listing(paths.REPO_ROOT, skip=(".git", "data", ".venv", "test-artifacts"))
    tmp_before = listing(tmp_path)

    at = open_page("explorer")
    at.sidebar.text_input(key="db").input(str(outside / "db" / "evil.duckdb")).run()
    at.sidebar.file_uploader(key="upload").set_value(("prompts.csv", SIMPLE_CSV, "text/csv")).run()
    for page in ("sweep", "judges", "probes", "report"):
        at.switch_page(f"pages/{page}.py").run()
        assert any("outside the folders" in str(e.value) for e in at.error), page
    assert listing(outside) == set()  # the upload went to data/uploads, not next to the refused database
    at.sidebar.text_input(key="db").input(str(app_env["db"])).run()

    at.switch_page("pages/explorer.py").run()
    at.sidebar.selectbox(key="model_choice").set_value("__other__").run()
    at.sidebar.text_input(key="model_path").input(str(outside / "model")).run()
    assert any("outside the folders" in str(e.value) for e in at.sidebar.error)
    at.sidebar.selectbox(key="model_choice").set_value(app_env["model"]).run()
    at.sidebar.number_input(key="max_new_tokens").set_value(4)
    at.button(key="generate").click().run(timeout=test_app_pages.JOB_TIMEOUT)
    at.button(key="lens").click().run(timeout=test_app_pages.JOB_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]

    at.switch_page("pages/judges.py").run()
    at.text_input(key="harmbench-path").input(str(outside / "classifier")).run()
    at.button(key="harmbench-run").click().run()
    assert any("outside the folders" in str(e.value) for e in at.error)

    at.switch_page("pages/sweep.py").run()
    form_inputs = [t for t in at.text_input if t.label.startswith("HarmBench classifier")]
    form_inputs[0].input(str(outside / "classifier"))
    at.button[0].click().run()
    assert any("outside the folders" in str(e.value) for e in at.error)

    at.switch_page("pages/probes.py").run()
    at.button(key="run-probes").click().run()
    assert _jobs.job_board().wait(timeout=test_app_pages.JOB_TIMEOUT)
    assert _jobs.job_board().current.state == "done", _jobs.job_board().current.outcome
    at.switch_page("pages/report.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert _store.export_bytes(str(app_env["db"]), "csv")  # what the report's download button builds

    assert listing(outside) == set()
    assert listing(work) == set()
    assert listing(paths.REPO_ROOT, skip=(".git", "data", ".venv", "test-artifacts")) == repo_before
    allowed = paths.allowed_roots()
    for name in listing(tmp_path) - tmp_before:
        target = (tmp_path / name).resolve()
        assert any(target == root or root in target.parents for root in allowed), name
    assert [upload_display_name(p.name) for p in (tmp_path / "data" / "uploads").iterdir()] == ["prompts.csv"]


# ---------------------------------------------------------------- 2. one base for relative paths


@pytest.fixture
def elsewhere(app_env, monkeypatch, tmp_path, tiny_model_dir):
    """A project folder (REPO_ROOT) and a server working folder that differ, each with a model folder of
    the same relative name; load_model records what it is asked to load instead of loading."""
    project, work = tmp_path / "project", tmp_path / "cwd"
    for root in (project, work):
        shutil.copytree(tiny_model_dir, root / "data" / "models" / "m")
    shutil.copytree(tiny_model_dir, work / "hub-like")
    monkeypatch.setattr(paths, "REPO_ROOT", project)
    monkeypatch.setattr(paths, "DATA_DIR", project / "data")
    monkeypatch.chdir(work)
    asked: list[str] = []

    def recording_load(source=None, **_kwargs):
        asked.append(source)
        raise ModelLoadError("recorded, not loaded")

    import engine.models

    monkeypatch.setattr(engine.models, "load_model", recording_load)
    return {"project": project, "work": work, "asked": asked}


def _type_model(at, text: str) -> None:
    at.sidebar.selectbox(key="model_choice").set_value("__other__").run()
    at.sidebar.text_input(key="model_path").input(text).run()


def test_a_relative_model_path_is_checked_and_loaded_from_the_project_folder(elsewhere):
    at = open_page("explorer")
    _type_model(at, "data/models/m")
    at.sidebar.number_input(key="max_new_tokens").set_value(4)
    at.button(key="generate").click().run()
    assert elsewhere["asked"] == [str(elsewhere["project"] / "data" / "models" / "m")]


def test_a_name_found_only_in_the_working_folder_is_refused(elsewhere):
    at = open_page("explorer")
    _type_model(at, "hub-like")
    assert any("relative paths start at the project folder" in str(e.value) for e in at.sidebar.error)
    assert not any(Path(a).resolve().is_relative_to(elsewhere["work"]) for a in elsewhere["asked"] if a)


def test_a_stored_model_id_outside_the_allowed_folders_is_never_loaded(app_env, tmp_path_factory):
    outside = tmp_path_factory.mktemp("stored-outside")
    with Store.open(app_env["db"]) as store:
        store.save_model(ModelInfo(str(outside), "outsidehash", "LlamaForCausalLM", 8, 64, "float32", "cpu"))
    at = open_page("explorer")
    at.sidebar.selectbox(key="model_choice").set_value(str(outside)).run()
    at.button(key="generate").click().run()
    assert any("outside the folders" in str(e.value) for e in at.error)
    assert not any(True for _ in outside.iterdir())


def test_server_settings_resolve_against_the_project_folder(app_env, monkeypatch, tmp_path):
    from pages import _paths

    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEPTHSCOPE_ACTIVATIONS", "data/acts")
    monkeypatch.setenv("DEPTHSCOPE_MODEL", "./data/models/m")
    monkeypatch.setenv("DEPTHSCOPE_DB", "data/x.duckdb")
    assert _paths.activations_dir() == tmp_path / "project" / "data" / "acts"
    assert _paths.default_model() == str(tmp_path / "project" / "data" / "models" / "m")
    assert _paths.resolve_db("") == tmp_path / "project" / "data" / "x.duckdb"
