"""The dashboard, page by page, with Streamlit's AppTest: widgets exist, nothing raises, empty states
explain themselves, the depth slider relabels, model text stays plain text, heavy work runs on buttons.

A tiny saved model (DEPTHSCOPE_MODEL) and a temp database (DEPTHSCOPE_DB) stand in for the real ones;
``seed_store`` writes a few rows of every kind so the pages have something to show.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine import modelfiles, queries
from engine.datasets import load_prompt_set, prompt_set_id
from engine.judges import get_judge, human_verdict
from engine.judges.base import JudgeItem
from engine.store import ProbeRecord, Store
from engine.types import Completion, GenerationParams, ModelInfo, Verdict
from pages import _jobs, _models, _store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ("explorer", "sweep", "judges", "probes", "report")
XSS = "<script>alert(1)</script><b>bold</b>"
OTHER_HASH = "othermodelhash01"
SEED_LAYERS = (4, 6, 7, 8)  # default_layers(8)
# Upper bounds only (a passing run never waits for them): generous enough for a loaded 2-core machine.
TIMEOUT = 180  # one script run of a page
JOB_TIMEOUT = 480  # a background job (sweep, probes, a model load)


def _text_at(prompt_index: int, k: int, harmful: bool, flip: bool) -> str:
    if prompt_index == 0 and k == 7:
        return XSS
    if k == 4:
        return "the the the the the the the the the the the the the the the the"
    refuses = harmful and (k == 8) != flip and prompt_index % 2 == 0
    return "I'm sorry, but I cannot help with that." if refuses else "Sure, here is how: step one, step two."


def seed_store(
    db: Path, model_id: str, model_hash: str, activations: Path | None = None, other_id: str = "other-model"
) -> dict:
    """Two models × 8 demo prompts × 4 depths, keyword + HarmBench + one human verdict, probe results.

    ``model_hash`` should be the real hash of the model at ``model_id`` (see ``tiny_hash``), so the app
    finds these rows whether or not it has loaded the model; ``other_id`` names the second model.
    """
    prompts = load_prompt_set("demo")
    params = GenerationParams()
    keyword = get_judge("keyword")
    with Store.open(db) as store:
        # the set as swept here: its first 8 prompts, so every seeded depth covers the whole set
        store.save_prompt_set("demo", prompts[:8], source="demo")
        for hash_, name, flip in ((model_hash, model_id, False), (OTHER_HASH, other_id, True)):
            store.save_model(ModelInfo(name, hash_, "LlamaForCausalLM", 8, 64, "float32", "cpu"))
            completions = [
                Completion(
                    hash_, p.prompt_id, p.text, k, params.key(), _text_at(i, k, p.label == "harmful", flip)
                )
                for i, p in enumerate(prompts[:8])
                for k in SEED_LAYERS
            ]
            store.save_generations(completions, params=params)
            items = [JudgeItem(c.key, c.prompt_text, c.text) for c in completions]
            verdicts = keyword.judge(items)
            store.save_verdicts(verdicts)
            store.save_verdicts(  # a stricter second judge: disagrees on incoherent answers
                [
                    Verdict(
                        v.completion_key,
                        "harmbench",
                        "llama2-13b-cls",
                        v.jailbroken and not v.degenerate,
                        degenerate=v.degenerate,
                    )
                    for v in verdicts
                ]
            )
        first = completions[0]
        store.save_verdicts(
            [human_verdict(first.key, "not harmful", "checked by hand", completion=first.text)]
        )
        store.save_probe_results(_probe_records(prompts, model_hash, activations))
    return {"prompts": prompts, "params": params}


def _probe_records(prompts, model_hash: str, activations: Path | None) -> list[ProbeRecord]:
    set_id = prompt_set_id(prompts)
    ref = None
    if activations is not None:
        activations.mkdir(parents=True, exist_ok=True)
        ref = f"{model_hash}-{set_id}-directions.npz"
        rng = np.random.default_rng(0)
        np.savez(activations / ref, probe=rng.normal(size=(9, 64)), diff_of_means=rng.normal(size=(9, 64)))
    records = []
    for layer in range(9):
        extra = {
            "depth_percent": 100 * layer / 8,
            "refusal_mass_harmful": 0.35 if layer >= 7 else 0.05,
            "refusal_mass_benign": 0.05,
            "refusal_p_value": 0.5 if layer < 6 else 0.01,
            "n_prompts": 24,
            "beats_baselines": layer >= 5,  # the stored verdict of the rule (layer 4 gains 0.05, p too high)
            "training_overlap": 3,
        }
        if ref:
            extra["direction_ref"] = f"{ref}#probe[{layer}]"
        accuracy = min(1.0, 0.5 + 0.1 * layer)
        records.append(ProbeRecord(model_hash, set_id, layer, "logreg", accuracy, 0.05, accuracy, extra))
        records.append(
            ProbeRecord(model_hash, set_id, layer, "diff-of-means", accuracy - 0.05, None, None, extra)
        )
    for kind, accuracy in (("baseline-bow", 0.8), ("baseline-embedding", 0.85)):  # read no layer
        records.append(ProbeRecord(model_hash, set_id, 0, kind, accuracy, None, None, {"n_prompts": 24}))
    return records


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def navigation_only(monkeypatch):
    """Streamlit 1.67's AppTest resets ``PagesManager.uses_pages_directory`` before every run, so with a
    pages/ folder next to app.py each rerun executes the page file alone (multipage "v1" mode): no app.py,
    no sidebar, other widget ids. A real server does that at most once per process (its first run), which
    ``_skeleton.ensure_frame`` covers. Here every run goes through app.py's st.navigation, as in the
    browser."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture(scope="session")
def tiny_hash(tiny_model_dir) -> str:
    """The content hash DepthScope gives the tiny model (what a loaded model's rows are keyed by)."""
    from engine.models import load_model

    return load_model(str(tiny_model_dir)).info.model_hash


@pytest.fixture
def app_env(tmp_path, tiny_model_dir, monkeypatch):
    """Environment for one app run: temp db, tiny model, temp activation cache; caches cleared."""
    import streamlit as st

    db = tmp_path / "app.duckdb"
    monkeypatch.setenv("DEPTHSCOPE_DB", str(db))
    monkeypatch.setenv("DEPTHSCOPE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("DEPTHSCOPE_ACTIVATIONS", str(tmp_path / "activations"))
    st.cache_data.clear()
    yield {"db": db, "model": str(tiny_model_dir), "activations": tmp_path / "activations"}
    st.cache_data.clear()
    _store.open_store.clear()  # closes this test's database


@pytest.fixture
def seeded(app_env, tiny_hash):
    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"])
    return app_env


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page != "explorer":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> list[str]:
    return [e.value for e in at.text] + [e.value for e in at.code]


def markdowns(at: AppTest) -> list[str]:
    blocks = [at.markdown, at.caption, at.info, at.warning, at.error, at.success, at.title, at.header]
    return [str(e.value) for block in blocks for e in block]


# ---------------------------------------------------------------- every page, with and without data


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_data(seeded, page):
    at = open_page(page)
    assert at.title[0].value  # every page names itself…
    assert at.caption[0].value  # …and explains itself
    assert at.sidebar.selectbox(key="model_choice").value == seeded["model"]
    assert at.sidebar.selectbox(key="prompt_set").value == "demo"


@pytest.mark.parametrize(
    ("page", "hint"),
    [
        ("explorer", "Nothing stored for this prompt"),
        ("sweep", "No judged completions"),
        ("judges", "No verdicts yet"),
        ("probes", "No probe results"),
        ("report", "Nothing to report yet"),
    ],
)
def test_empty_database_says_what_to_do(app_env, page, hint):
    at = open_page(page)
    assert any(hint in message for message in markdowns(at)), markdowns(at)


def test_sidebar_names_the_default_model_and_how_to_use_a_real_one(app_env, monkeypatch):
    monkeypatch.delenv("DEPTHSCOPE_MODEL")
    at = open_page("report")
    assert at.sidebar.selectbox(key="model_choice").value == modelfiles.DEFAULT_MODEL
    sidebar_text = " ".join(str(e.value) for e in at.sidebar.markdown)
    assert "SmolLM2-135M-Instruct" in sidebar_text and "27 of 30 layers" in sidebar_text
    assert "checkpoint folder" in sidebar_text
    captions = " ".join(str(e.value) for e in at.sidebar.caption)
    assert "Licence: MIT" in captions  # every built-in set names its source and licence
    at.sidebar.selectbox(key="prompt_set").set_value("harmbench-val").run()
    captions = " ".join(str(e.value) for e in at.sidebar.caption)
    assert "HarmBench" in captions and "centerforaisafety" in captions


def test_other_model_path_box(app_env, monkeypatch):
    monkeypatch.setenv("DEPTHSCOPE_ALLOWED_PATHS", "/no")
    at = open_page("explorer")
    at.sidebar.selectbox(key="model_choice").set_value("__other__").run()
    assert at.sidebar.text_input(key="model_path")
    at.sidebar.text_input(key="model_path").input("/no/such/model").run()
    assert not at.exception
    assert any("No config.json" in str(w.value) for w in at.sidebar.warning)


def test_paths_outside_data_and_the_allow_list_are_refused(app_env):
    at = open_page("explorer")
    at.sidebar.selectbox(key="model_choice").set_value("__other__").run()
    at.sidebar.text_input(key="model_path").input("/etc").run()
    assert any("outside the folders" in str(e.value) for e in at.sidebar.error)
    assert not at.exception
    target = Path("/tmp/depthscope-not-allowed.duckdb")
    target.unlink(missing_ok=True)
    at.sidebar.text_input(key="db").input(str(target)).run()
    assert any("outside the folders" in str(e.value) for e in at.error)
    assert not target.exists() and not at.exception


# ---------------------------------------------------------------- explorer


def test_explorer_slider_relabels_and_shows_cached_completions(seeded):
    at = open_page("explorer")
    slider = at.select_slider(key="depth-8")
    assert slider.value == 8
    assert "### 8 / 8 layers · 100 %" in markdowns(at)
    before = texts(at)
    assert "I'm sorry, but I cannot help with that." in before  # the stored full-depth answer, no model load
    slider.set_value(4).run()
    assert not at.exception
    assert "### 4 / 8 layers · 50 %" in markdowns(at)
    assert "### 8 / 8 layers · 100 %" not in markdowns(at)
    assert at.multiselect(key="compare-8").value == [4, 6, 7, 8]
    assert at.button(key="generate").label.startswith("Generate missing depths (0)")


def test_model_text_is_shown_as_plain_text(seeded):
    at = open_page("explorer")  # prompt 0 at 7 layers holds the HTML/JS completion
    assert XSS in texts(at)
    assert not any("<script>" in m or "alert(1)" in m for m in markdowns(at))
    assert not at.get("html")
    at.switch_page("pages/judges.py").run()
    assert not at.exception
    assert not any("<script>" in m for m in markdowns(at))


def test_human_label_is_saved(seeded):
    at = open_page("explorer")
    at.radio[1].set_value("harmful")  # [0] is the prompt source, [1] the focus card's label
    next(b for b in at.button if b.label == "Save label").click().run()
    assert not at.exception
    with Store.open(seeded["db"]) as store:
        human = [v for v in store.verdicts_for(judge="human") if v.raw == "harmful"]
    assert human


def test_explorer_generates_missing_depths_on_a_button(app_env):
    at = open_page("explorer")
    at.sidebar.number_input(key="max_new_tokens").set_value(8)
    at.radio(key="prompt_source").set_value("Type your own").run()
    at.text_area(key="typed_prompt").input("What is the capital of France?").run()
    assert at.button(key="generate").label == "Generate missing depths (4)"
    with Store.open(app_env["db"]) as store:
        assert store.table_counts()["generations"] == 0  # nothing heavy on a mere page load
    at.button(key="generate").click().run(timeout=JOB_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key="generate").label == "Generate missing depths (0)"
    assert any("keyword:" in m for m in markdowns(at))
    with Store.open(app_env["db"]) as store:  # the dashboard's path scores what it generates
        assert all(c.full_depth_nll is not None for c in store.get_generations())
    assert sum("Full-depth NLL" in str(c.proto.help) for c in at.caption) == 4  # the number, in a tooltip
    at.button(key="lens").click().run(timeout=JOB_TIMEOUT)
    assert not at.exception
    lens = next(frame.value for frame in at.dataframe if len(frame.value) == 9)  # 8 layers + embeddings
    assert list(lens.columns) == ["depth", "first word", "its probability", "chance of a refusal opening"]
    assert not lens.isna().any().any() and lens["its probability"].str.endswith(" %").all()


# ---------------------------------------------------------------- sweep


def test_sweep_page_shows_curves_table_and_flips(seeded):
    at = open_page("sweep")
    assert at.button(key="FormSubmitter:sweep-form-Start sweep") is not None
    table = at.dataframe[0].value
    assert {"n", "ASR %", "95 % interval", "incoherent %"} <= set(table.columns)
    assert any("Ranking flip" in str(w.value) for w in at.warning)


def _start_sweep(at: AppTest, prompts: int, depths: str) -> _jobs.Job:
    by_label = {w.label: w for w in [*at.number_input, *at.text_input]}
    by_label["Only the first N prompts (0 = all)"].set_value(prompts)
    by_label["Depths, in % of each model's layers"].input(depths)
    next(b for b in at.button if b.label == "Start sweep").click().run(timeout=JOB_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert _jobs.job_board().wait(timeout=JOB_TIMEOUT)
    at.run()  # the finished job refreshes the page
    assert not at.exception
    return _jobs.job_board().current


def test_job_board_refuses_a_second_job_while_one_runs():
    """The worker side runs outside any Streamlit script: it reports "busy" by returning None."""
    board = _jobs.JobBoard(_models.ModelHub())
    release = threading.Event()
    first = board.start(
        "a", "first job", lambda job: "done here" if release.wait(JOB_TIMEOUT) else "timed out"
    )
    assert first is not None and first.running
    assert board.start("b", "second job", lambda job: "never") is None
    release.set()
    assert board.wait(timeout=JOB_TIMEOUT)
    assert (first.state, first.outcome, first.fraction) == ("done", "done here", 1.0)
    assert board.start("c", "third job", lambda job: "") is not None  # the lock was released
    assert board.wait(timeout=JOB_TIMEOUT)


def test_sweep_runs_in_the_background_and_resumes(app_env):
    at = open_page("sweep")
    at.sidebar.number_input(key="max_new_tokens").set_value(8)
    job = _start_sweep(at, prompts=2, depths="50, 100")  # one harmful + one benign prompt
    assert (job.kind, job.state) == ("sweep", "done"), job.outcome
    assert job.outcome.startswith("4 new completions, 0 already stored")
    assert at.dataframe, "the results table appears once the sweep is done"
    job = _start_sweep(at, prompts=3, depths="50, 100")  # one more prompt: only it is generated
    assert job.outcome.startswith("2 new completions, 4 already stored"), job.outcome
    with Store.open(app_env["db"]) as store:
        assert store.table_counts()["generations"] == 6


def test_sweep_page_submits_to_the_ray_cluster_when_its_address_is_set(app_env, monkeypatch):
    """DEPTHSCOPE_RAY_ADDRESS: worker/GPU inputs, the sweep goes through make_executor (a fake cluster
    here, no Ray), progress counts stored chunks and workers, and the page never imports ray."""
    import engine.executors
    from engine.executors.local import LocalExecutor

    made, messages = [], []

    class FakeCluster(LocalExecutor):
        workers, prompts_per_chunk = 3, 1

        def close(self) -> None:
            made.append("closed")

    def fake_make_executor(address, **sizes):
        made.append((address, sizes))
        return FakeCluster()

    monkeypatch.setenv("DEPTHSCOPE_RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(engine.executors, "make_executor", fake_make_executor)
    update = _jobs.Job.update
    monkeypatch.setattr(_jobs.Job, "update", lambda job, f, m: (messages.append(m), update(job, f, m)))
    at = open_page("sweep")
    at.sidebar.number_input(key="max_new_tokens").set_value(4)
    at.number_input(key="ray-workers").set_value(3)
    at.number_input(key="ray-gpus").set_value(0.5)
    job = _start_sweep(at, prompts=2, depths="50, 100")
    assert made[0][1].pop("stop") is job.stop  # the Stop button reaches the Ray executor's waits
    assert (job.state, made[0], made[-1]) == (
        "done",
        ("10.0.0.1:6379", {"workers": 3, "gpus_per_worker": 0.5}),
        "closed",
    ), job.outcome
    assert "Ray" in job.title and job.outcome.endswith("Ran on 3 Ray worker(s).")
    generating = [m for m in messages if "generating" in m]
    assert generating[-1].endswith(
        "generating 4/4 answers on 3 Ray worker(s), 2 chunk(s) stored"
    )  # a chunk per prompt
    assert "ray" not in sys.modules or not any(m.startswith("pages") for m in _ray_importers())


def _ray_importers() -> list[str]:
    """Modules that hold a reference to the ray package (a page would, had it imported ray)."""
    ray = sys.modules.get("ray")
    return [name for name, module in list(sys.modules.items()) if getattr(module, "ray", None) is ray]


# ---------------------------------------------------------------- judges, probes, report


def test_judges_page_agreement_and_disagreements(seeded):
    at = open_page("judges")
    assert at.selectbox(key="judge-a").value == "keyword"
    assert at.selectbox(key="judge-b").value == "harmbench"
    assert {m.label for m in at.metric} == {"Kappa", "Inflation", "n"}
    assert at.selectbox(key="disagreement").options
    assert at.text_input(key="harmbench-path") is not None


def test_judges_page_without_harmbench_explains_weights(app_env, monkeypatch):
    prompt = load_prompt_set("demo")[0]
    completion = Completion("h", prompt.prompt_id, prompt.text, 8, GenerationParams().key(), "Sure.")
    with Store.open(app_env["db"]) as store:
        store.save_model(ModelInfo(app_env["model"], "h", "LlamaForCausalLM", 8, 64, "float32", "cpu"))
        store.save_prompt_set("demo", [prompt], source="demo")
        store.save_generations([completion])
        store.save_verdicts(get_judge("keyword").judge([JudgeItem(completion.key, prompt.text, "Sure.")]))
    at = open_page("judges")
    assert at.selectbox(key="judge-b").value == "harmbench"
    assert any("No HarmBench verdicts yet" in m and "weights" in m for m in markdowns(at))
    assert any("hf download" in m for m in markdowns(at))  # how to get the classifier
    assert at.button(key="harmbench-run").disabled  # until a folder is given
    at.text_input(key="harmbench-path").input("/no/such/classifier").run()
    assert not at.button(key="harmbench-run").disabled
    at.button(key="harmbench-run").click().run()  # outside data/ and the allow-list: refused at once
    assert any("outside the folders" in str(e.value) for e in at.error)
    monkeypatch.setenv("DEPTHSCOPE_ALLOWED_PATHS", "/no")
    at.button(key="harmbench-run").click().run()  # allowed but missing: the job fails with a message
    assert _jobs.job_board().wait(timeout=JOB_TIMEOUT)
    assert _jobs.job_board().current.state == "failed"
    at.run()
    assert not at.exception
    errors = [str(e.value) for e in at.sidebar.error]
    assert any("HarmBench judging failed" in e and "does not exist" in e for e in errors), errors
    at.sidebar.button(key="dismiss-sidebar").click().run()
    assert not at.sidebar.error
    at.selectbox(key="judge-b").set_value("human").run()
    assert not at.exception
    assert any("No human verdicts yet" in m for m in markdowns(at))


def test_probes_page_shows_lag_and_cosines(seeded):
    at = open_page("probes")
    labels = {m.label: m.value for m in at.metric}
    assert labels["Harm detected at layer"] == "5"  # first layer whose stored verdict beats the baselines
    assert labels["Refusal emerges at layer"] == "7"  # harmful − benign ≥ 0.10 with p < 0.05
    assert labels["Alignment lag"].startswith("2 layers")
    assert not any("direction file" in str(i.value) for i in at.info)
    charts = {chart.proto.id: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}
    refusal = next(spec for spec in charts.values() if "logit lens" in json.dumps(spec["layout"]))
    swept = next(t for t in refusal["data"] if "sweep" in t["name"])
    # seeded keyword verdicts: at full depth the 4 harmful prompts refuse, below it none do
    assert dict(zip(swept["x"], swept["y"], strict=True)) == {4: 0.0, 6: 0.0, 7: 0.0, 8: 100.0}
    probe = next(spec for spec in charts.values() if "probe accuracy" in json.dumps(spec["layout"]))
    flat = {t["name"]: t["y"] for t in probe["data"] if "baseline" in t.get("name", "")}
    assert sorted(flat.values()) == [[80.0, 80.0], [85.0, 85.0]]  # horizontal lines at the baselines
    assert all(t["x"] == [0, 8] for t in probe["data"] if "baseline" in t.get("name", ""))
    captions = " ".join(str(c.value) for c in at.caption)
    assert "beats the best baseline" in captions and "McNemar" in captions and "24 prompts" in captions
    assert "Training overlap: 3 of 24 prompts" in captions
    assert not any("No layer can show harm detection" in str(i.value) for i in at.info)  # a layer does here


def test_probe_run_button(app_env):
    at = open_page("probes")
    at.button(key="run-probes").click().run()
    assert _jobs.job_board().wait(timeout=JOB_TIMEOUT)
    assert _jobs.job_board().current.state == "done", _jobs.job_board().current.outcome
    at.run()
    assert not at.exception
    assert any(m.label == "Alignment lag" for m in at.metric)


def test_report_page_headlines_caveats_and_exports(seeded):
    at = open_page("report")
    assert at.radio(key="report-judge").value == "harmbench"
    headings = [str(m.value) for m in at.markdown if str(m.value).startswith("####")]
    assert len(headings) == 2 and "harmful" in headings[0]
    caveats = " ".join(str(m.value) for m in at.markdown)
    assert "95" in caveats and "incoherent" in caveats
    at.radio(key="report-judge").set_value("keyword").run()
    assert "its ASR is" in " ".join(str(m.value) for m in at.markdown)  # measured inflation vs HarmBench
    assert {b.label for b in at.get("download_button")} >= {"Report (HTML, works offline)", "Chart (PNG)"}


def test_report_exports_are_self_contained(seeded):
    from engine import report
    from pages import _charts

    with Store.open(seeded["db"]) as store:
        rows = report.asr_rows(store, "harmbench")
    frame = report.asr_frame(rows)
    page = _charts.report_html("T <x>", ["a <b>headline</b>"], ["c"], _charts.asr_figure(frame), frame)
    assert len(page) > 1_000_000  # plotly.js itself is inside: the file opens offline
    assert not re.search(r"<script[^>]+src=", page)  # no external script
    assert "a &lt;b&gt;headline&lt;/b&gt;" in page
    assert _charts.asr_png(frame).startswith(b"\x89PNG")


# ---------------------------------------------------------------- the torch-free core the pages read


def test_torch_modules_and_the_torch_free_core_agree():
    from engine import lag, models
    from engine.lenses import logit
    from pages import _charts

    assert (models.DEFAULT_MODEL, models.DEMO_MODEL) == (modelfiles.DEFAULT_MODEL, modelfiles.DEMO_MODEL)
    assert (logit.EMERGENCE_MARGIN, logit.EMERGENCE_ALPHA) == (lag.EMERGENCE_MARGIN, lag.EMERGENCE_ALPHA)
    assert _charts.short(modelfiles.DEFAULT_MODEL) == "SmolLM2-135M-Instruct"
    assert _charts.short(modelfiles.DEMO_MODEL) == "DepthScope demo model"


def test_peek_layers_without_loading(tiny_model_dir, tmp_path):
    assert modelfiles.peek_n_layers(str(tiny_model_dir)) == 8
    assert modelfiles.peek_n_layers(str(tmp_path / "missing")) is None
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 5)
    assert modelfiles.peek_n_layers(str(tmp_path / "bad.gguf")) is None
    assert json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"] == 8


def test_lag_view_matches_engine_lens():
    import pandas as pd

    from engine.lenses import logit

    harmful = (0.0, 0.05, 0.3, 0.6)
    benign = (0.0, 0.02, 0.1, 0.1)
    p_values = (0.9, 0.2, 0.04, 0.01)
    curve = logit.RefusalCurve((0, 1, 2, 3), harmful, benign, p_values)
    table = pd.DataFrame(
        {
            "layer": [0, 1, 2, 3],
            "accuracy": [0.5, 0.96, 0.99, 1.0],
            "beats_baselines": [False, True, False, True],  # the stored verdicts decide, not accuracy
            "refusal_mass_harmful": harmful,
            "refusal_mass_benign": benign,
            "refusal_p_value": p_values,
        }
    )
    view = queries.lag_view(table, 3)
    assert view.refusal_emergence_layer == logit.refusal_emergence_layer(curve) == 2
    assert (view.harm_detection_layer, view.lag_layers) == (1, 1)
    # stored before the content baselines: no verdicts, so no detection (not the old 95 % threshold)
    assert queries.lag_view(table.drop(columns="beats_baselines"), 3).harm_detection_layer is None


# ---------------------------------------------------------------- house rule: no torch in the pages


NO_TORCH_SCRIPT = """
import sys
from streamlit.runtime.pages_manager import PagesManager
init = PagesManager.__init__
def patched(self, *a, **k):
    init(self, *a, **k)
    PagesManager.uses_pages_directory = False
PagesManager.__init__ = patched
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=180)
at.run()
for page in ("sweep", "judges", "probes", "report"):
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
heavy = sorted(m for m in ("torch", "transformers", "sklearn") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def test_pages_render_without_importing_torch(seeded):
    """Every page renders from the store in a fresh interpreter without loading torch or transformers."""
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, APP], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HEAVY:\n" in result.stdout, result.stdout


def test_build_demo_model_button_runs_the_builder_in_the_background(app_env, monkeypatch, tmp_path):
    import engine.demo_model

    monkeypatch.setattr(modelfiles, "DEMO_MODEL_DIR", tmp_path / "not-built")  # as on a fresh clone
    calls = []

    def fake_build(out_dir=None, seed=0, progress=None, scale="full"):
        for step in range(3):
            progress(step / 3, f"stage {step}")
        calls.append(scale)
        return Path("/tmp/fake-demo-model")

    monkeypatch.setattr(engine.demo_model, "build_demo_model", fake_build)
    at = open_page("explorer")
    at.sidebar.button(key="build-demo").click().run()
    assert _jobs.job_board().wait(timeout=JOB_TIMEOUT)
    job = _jobs.job_board().current
    assert (job.kind, job.state, calls) == ("demo-model", "done", ["full"])
    at.run()
    done = [str(s.value) for s in at.sidebar.success]
    assert any("Building the demo model finished" in s and "fake" in s for s in done), done


def test_flip_stars_sit_at_each_models_own_depth_and_only_when_significant():
    from engine import report, stats
    from pages import _charts

    def row(model: str, n_layers: int, layers: int, asr: float) -> report.AsrRow:
        return report.AsrRow(
            model, model, "p", n_layers, layers, 100 * layers / n_layers, "keyword", "v1", 100,
            int(100 * asr), 0, 0, asr, asr, asr, 1 - asr,
        )  # fmt: skip

    frame = report.asr_frame(
        [row("a", 10, 5, 0.3), row("a", 10, 10, 0.7), row("b", 20, 10, 0.6), row("b", 20, 20, 0.4)]
    )
    flip = stats.Flip("a", "b", 50.0, 5, 10, 0.3, 0.6, 0.7, 0.4, 0.001, 0.003)
    chance = stats.Flip("a", "b", 50.0, 5, 10, 0.3, 0.6, 0.7, 0.4, 0.02, 0.2)
    stars = [t for t in _charts.asr_figure(frame, [flip, chance]).data if t.name == "ranking flip"]
    assert len(stars) == 1
    assert list(stars[0].x) == [50.0, 50.0] and list(stars[0].y) == [30.0, 60.0]  # a at k=5, b at k=10
    assert "Holm-corrected p = 0.003" in stars[0].hovertext[0] and "b: 10 layers" in stars[0].hovertext[0]
    assert not [t for t in _charts.asr_figure(frame, [chance]).data if t.name == "ranking flip"]


def test_full_depth_nll_shows_next_to_the_incoherence_flag(seeded):
    with Store.open(seeded["db"]) as store:
        store.save_full_depth_nll({c.key: 0.25 + 8 - c.layers for c in store.get_generations()})
    at = open_page("explorer")
    helps = [str(c.proto.help) for c in at.caption]  # the numbers, for specialists, behind the tooltip
    assert any(h.startswith("Full-depth NLL 0.25 nats/token") for h in helps), helps  # 8 of 8 layers
    assert any(h.startswith("Full-depth NLL 4.25 nats/token") for h in helps)  # 4 of 8: the loop
    words = {str(c.value) for c in at.caption if c.proto.help}  # the cards themselves speak words
    assert "Reads far less naturally to the untruncated model than its own answer." in words  # 4.25 vs 0.25
    assert not any("nats" in w or "NLL" in w for w in words)
    assert any(m.endswith(":orange-badge[incoherent output]") for m in markdowns(at))
    at.switch_page("pages/sweep.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = pd.concat([d.value for d in at.dataframe[:2]], axis=1)  # the columns that fit, then the rest
    assert {"judged", "incoherent %", "median full-depth NLL"} <= set(table.columns)
    assert "4.25 (of 4)" in set(table["median full-depth NLL"])  # 4 of the 8 seeded prompts are harmful
    assert any("median over the judged answers" in m for m in markdowns(at))


# ---------------------------------------------------------------- early exit

EXIT_TEXT = "Sure <img src=x> ![x](y) $x$ step one"  # hostile token text: must stay characters
EXIT_MIN_LAYERS = 1  # the sidebar's default: the browser test only picks the policy
LENS_HASH = "lenshash0000001"


def _exit_layers(n_tokens: int, threshold: float, policy: str) -> tuple[int, ...]:
    """Lower thresholds exit earlier; saturation earlier still (a made-up but monotone pattern)."""
    base = 2 if policy == "saturation" else 3
    return tuple(min(8, base + (i % 3) + round(4 * threshold)) for i in range(n_tokens))


def _exit_answer(index: int, threshold: float) -> str:
    refuses = threshold > 0.6 and index in (2, 3, 6)  # prompts 2 and 6 are harmful, 3 benign
    return "I'm sorry, but I cannot help with that." if refuses else EXIT_TEXT


def seed_exits(db: Path, model_hash: str, tokenizer, lens_dir: Path) -> dict:
    """Dynamic-exit completions (confidence raw and tuned, saturation raw) of the first 8 demo prompts at
    thresholds 0.5 and 0.9, keyword verdicts, and a tuned-lens sidecar for the model."""
    prompts = load_prompt_set("demo")[:8]
    keyword = get_judge("keyword")
    variants = []
    with Store.open(db) as store:
        for policy, head in (("confidence", "raw"), ("saturation", "raw"), ("confidence", "tuned")):
            for threshold in (0.5, 0.9):
                params = GenerationParams(
                    exit_policy=policy,
                    threshold=threshold,
                    min_layers=EXIT_MIN_LAYERS,
                    exit_head=head,
                    lens_hash=LENS_HASH if head == "tuned" else "",
                )
                # the higher threshold keeps two harmful prompts' refusals (and refuses one benign prompt)
                texts = [_exit_answer(i, threshold) for i in range(len(prompts))]
                completions = [
                    Completion(
                        model_hash, p.prompt_id, p.text, 8, params.key(), text,
                        ids := tuple(tokenizer.encode(text, add_special_tokens=False)),
                        exit_layers=_exit_layers(len(ids), threshold, policy),
                    )
                    for p, text in zip(prompts, texts, strict=True)
                ]  # fmt: skip
                store.save_generations(completions, params=params)
                verdicts = keyword.judge([JudgeItem(c.key, c.prompt_text, c.text) for c in completions])
                store.save_verdicts(verdicts)
                store.save_verdicts(  # the Report's default judge sees them too
                    [Verdict(v.completion_key, "harmbench", "llama2-13b-cls", v.jailbroken) for v in verdicts]
                )
                variants.append(params)
    lens_dir.mkdir(parents=True, exist_ok=True)
    sidecar = {
        "model_hash": model_hash,
        "lens_hash": LENS_HASH,
        "corpus": "benign",
        "steps": 20,
        "heldout_tokens": 77,
        "n_texts_heldout": 5,
        "kl_raw": [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 0.0],
        "kl_tuned": [4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.0],
    }
    (lens_dir / f"{model_hash}.json").write_text(json.dumps(sidecar), encoding="utf-8")
    return {
        "prompts": prompts,
        "variants": variants,
        "token_ids": tuple(tokenizer.encode(EXIT_TEXT, add_special_tokens=False)),  # the first prompt's
    }


@pytest.fixture
def exits_seeded(seeded, tiny_hash, tiny_tokenizer, tmp_path, monkeypatch):
    from engine.lenses import files as lens_files

    monkeypatch.setattr(lens_files, "LENS_DIR", tmp_path / "lenses")
    return seeded | seed_exits(seeded["db"], tiny_hash, tiny_tokenizer, tmp_path / "lenses")


def _choose_exit(at: AppTest, policy: str, thresholds: str, head: str = "raw") -> AppTest:
    at.sidebar.selectbox(key="exit_policy").set_value(policy).run()
    at.sidebar.text_input(key="exit_thresholds").input(thresholds).run()
    at.sidebar.number_input(key="exit_min_layers").set_value(EXIT_MIN_LAYERS).run()
    at.sidebar.radio(key="exit_head").set_value(head).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_sidebar_exit_settings_reach_the_selection(app_env):
    from pages._selection import exit_settings_from

    at = open_page("explorer")
    assert at.sidebar.selectbox(key="exit_policy").value == "static"
    assert not [w for w in at.sidebar.text_input if w.key == "exit_thresholds"]  # static: no thresholds
    _choose_exit(at, "confidence", "0.9, 0.5, 0.9")
    settings = exit_settings_from(at.session_state)
    assert (settings.policy, settings.thresholds, settings.min_layers) == ("confidence", (0.5, 0.9), 1)
    at.sidebar.text_input(key="exit_thresholds").input("0.5, lots").run()
    assert any("is not a number" in str(e.value) for e in at.sidebar.error)
    at.sidebar.text_input(key="exit_thresholds").input("0.5, 1.5").run()  # the CLI's range too
    assert any("the range of the confidence rule" in str(e.value) for e in at.sidebar.error)
    assert exit_settings_from(at.session_state).policy == "static"  # pages keep working meanwhile
    assert not at.exception


def test_explorer_colours_tokens_by_exit_layer_as_plain_text(exits_seeded, tiny_tokenizer):
    at = _choose_exit(open_page("explorer"), "confidence", "0.5, 0.9")
    strips = [h.proto.body for h in at.get("html") if "depthscope-exit-strip" in h.proto.body]
    assert len(strips) == 1
    body = strips[0]
    assert "<img" not in body and "&lt;" in body  # the tokens "<", "i", "m", "g": escaped, as text
    ids = exits_seeded["token_ids"]
    exits = _exit_layers(len(ids), 0.9, "confidence")  # the slider starts at the highest threshold
    found = [int(k) for k in re.findall(r"exited after (\d+) of 8 layers", body)]
    assert found == list(exits)
    pieces = re.findall(r'title="token \d+: [^"]*">([^<]*)</span>', body)
    assert html.unescape("".join(pieces)) == EXIT_TEXT  # ![x](y) and $x$ too: st.html reads no markdown
    mean = sum(exits) / len(exits)
    captions = " ".join(str(c.value) for c in at.caption)
    assert f"mean exit layer {mean:.1f} of 8 over {len(exits)} generated tokens" in captions
    at.segmented_control(key="exit-threshold").set_value(0.5).run()
    body = next(h.proto.body for h in at.get("html") if "depthscope-exit-strip" in h.proto.body)
    low = _exit_layers(len(ids), 0.5, "confidence")
    assert [int(k) for k in re.findall(r"exited after (\d+) of 8 layers", body)] == list(low)
    assert at.button(key="generate-exits").disabled  # both thresholds are stored
    assert not at.exception


def _with_stored_exits(exits_seeded, exits: list | None) -> None:
    """Overwrite the exit layers stored for the first prompt's answers (a damaged or hostile database)."""
    with duckdb.connect(str(exits_seeded["db"])) as con:
        con.execute(
            "UPDATE generations SET exit_layers = ? WHERE prompt_text = ?",
            [exits, exits_seeded["prompts"][0].text],
        )


@pytest.mark.parametrize(
    "damage", ["fewer", "more", "empty", "null list", "out of range", "null entries", "huge"]
)
def test_explorer_exit_strip_shows_what_is_consistent(exits_seeded, damage):
    n_tokens = len(exits_seeded["token_ids"])
    good = list(_exit_layers(n_tokens, 0.9, "confidence"))
    stored = {
        "fewer": good[:3],
        "more": good + [1, 2, 3],
        "empty": [],
        "null list": None,
        "out of range": [0, -1, 99, *good[3:]],
        "null entries": [None, *good[1:]],
        "huge": [2**31 - 1, *good[1:]],
    }[damage]
    _with_stored_exits(exits_seeded, stored)
    at = _choose_exit(open_page("explorer"), "confidence", "0.5, 0.9")
    assert not at.exception, [e.value for e in at.exception]
    body = next(h.proto.body for h in at.get("html") if "depthscope-exit-strip" in h.proto.body)
    valid = [k if k is not None and 1 <= k <= 8 else None for k in (stored or [])[:n_tokens]]
    valid += [None] * (n_tokens - len(valid))
    coloured = [int(k) for k in re.findall(r"exited after (\d+) of 8 layers", body)]
    assert coloured == [k for k in valid if k is not None]
    assert body.count("no valid exit layer stored") == valid.count(None) > 0 or damage == "more"
    pieces = re.findall(r'title="token \d+: [^"]*">([^<]*)</span>', body)
    assert html.unescape("".join(pieces)) == EXIT_TEXT  # every token's text is still shown, once
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "inconsistent" in warnings, warnings
    assert f"for {n_tokens} generated tokens" in warnings or "outside 1" in warnings


def test_explorer_generates_thresholds_and_colours_their_exits(app_env):
    """Threshold 1 (the top of the confidence rule's range, which the sidebar accepts) is out of reach
    on this model (every token uses all 8 layers); threshold 0 exits every token at the minimum, layer
    1: the strip shows exactly that, per token."""
    at = _choose_exit(open_page("explorer"), "confidence", "0, 1")
    button = at.button(key="generate-exits")
    assert "(2)" in button.label
    button.click().run(timeout=JOB_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key="generate-exits").disabled

    def exits_shown() -> list[int]:
        body = next(h.proto.body for h in at.get("html") if "depthscope-exit-strip" in h.proto.body)
        return [int(k) for k in re.findall(r"exited after (\d+) of 8 layers", body)]

    full = exits_shown()
    assert full and set(full) == {8}
    at.segmented_control(key="exit-threshold").set_value(0.0).run()
    early = exits_shown()
    assert early and set(early) == {1}
    captions = " ".join(str(c.value) for c in at.caption)
    assert f"mean exit layer 1.0 of 8 over {len(early)} generated tokens" in captions


def test_explorer_offers_missing_thresholds_on_a_button(exits_seeded):
    at = _choose_exit(open_page("explorer"), "confidence", "0.5, 0.7")
    button = at.button(key="generate-exits")
    assert not button.disabled and "(1)" in button.label
    at.segmented_control(key="exit-threshold").set_value(0.7).run()
    assert any("not generated for this prompt yet" in str(i.value) for i in at.info)


def test_probes_page_compares_raw_and_tuned_lens(exits_seeded):
    at = open_page("probes")
    charts = {chart.proto.id: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}
    kl = next(spec for spec in charts.values() if "Held-out KL" in json.dumps(spec["layout"]))
    curves = {t["name"]: t["y"] for t in kl["data"]}
    assert curves == {
        "raw head (logit lens)": [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 0.0],
        "tuned lens": [4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.0],
    }
    captions = " ".join(str(c.value) for c in at.caption)
    assert "77 tokens of 5 held" in captions and "7 of 7 layers" in captions


def test_probes_page_says_how_to_train_a_tuned_lens(seeded, tmp_path, monkeypatch):
    from engine.lenses import files as lens_files

    monkeypatch.setattr(lens_files, "LENS_DIR", tmp_path / "no-lenses")
    at = open_page("probes")
    assert any("No tuned lens" in str(i.value) for i in at.info)
    assert any(f"python -m engine lens train --model {seeded['model']}" in c.value for c in at.code)


@pytest.mark.parametrize("sidecar", ['{"model_hash": ', "[1, 2]", "{}", '{"lens_hash": "x"}', "\u00ff\u00fe"])
def test_probes_page_names_a_damaged_lens_sidecar(exits_seeded, tiny_hash, tmp_path, sidecar):
    path = tmp_path / "lenses" / f"{tiny_hash}.json"
    path.write_text(sidecar, encoding="latin-1")
    at = open_page("probes")
    errors = [str(e.value) for e in at.error]
    assert any("tuned lens file" in e and "lens train" in e for e in errors), errors
    assert any("lens train --model" in c.value for c in at.code)
    assert not at.get("plotly_chart") or all(
        "Held-out KL" not in chart.proto.spec for chart in at.get("plotly_chart")
    )


def test_explorer_refuses_a_damaged_tuned_lens_with_one_message(exits_seeded, tiny_hash, tmp_path):
    import torch

    from engine.lenses.tuned import TunedLens

    nan_lens = TunedLens(8, 64)
    torch.save({"weight": nan_lens.weight.detach() * float("nan"), "bias": nan_lens.bias.detach()},
               tmp_path / "lenses" / f"{tiny_hash}.pt")  # fmt: skip
    at = _choose_exit(open_page("explorer"), "confidence", "0.3", head="tuned")
    at.button(key="generate-exits").click().run(timeout=JOB_TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    errors = [str(e.value) for e in at.error]
    assert any("non\\-finite" in e and "lens train" in e for e in errors), errors
    (tmp_path / "lenses" / f"{tiny_hash}.json").write_text("[]")  # the sidecar too: said before any button
    at.run()
    assert any("holds a JSON list" in str(e.value) for e in at.error)
    assert not at.exception


def test_report_plots_asr_against_compute_used(exits_seeded, tiny_tokenizer):
    at = open_page("report")
    at.radio(key="report-judge").set_value("keyword").run()
    charts = {chart.proto.id: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}
    compute = next(spec for spec in charts.values() if "Compute used" in json.dumps(spec["layout"]))
    from pages import _charts

    mine = _charts.short(exits_seeded["model"]) + " · "  # two models stored: each series names its model
    asr = {
        t["name"].removeprefix(mine): dict(zip(t["x"], t["y"], strict=True))
        for t in compute["data"]
        if "refused" not in t["name"] and t["name"].startswith(mine)
    }
    assert set(asr) >= {
        "static truncation, raw head",
        "confidence exit, raw head",
        "saturation exit, raw head",
        "confidence exit, tuned head",
    }
    prompts = exits_seeded["prompts"]
    harmful = [i for i, p in enumerate(prompts) if p.label == "harmful"]
    kept = sum(_exit_answer(i, 0.9) != EXIT_TEXT for i in harmful)  # refusals kept at the higher threshold
    expected = {0.5: 100.0, 0.9: 100 * (len(harmful) - kept) / len(harmful)}
    curve = asr["confidence exit, raw head"]
    for threshold, value in expected.items():
        means = []  # compute used: the harmful answers' mean exit layers, averaged, ÷ 8
        for i in harmful:
            exits = _exit_layers(
                len(tiny_tokenizer.encode(_exit_answer(i, threshold))), threshold, "confidence"
            )
            means.append(sum(exits) / len(exits))
        x = 100 * sum(means) / len(means) / 8
        assert [y for cx, y in curve.items() if abs(cx - x) < 0.01] == [pytest.approx(value)]
    static = asr["static truncation, raw head"]
    assert sorted(static) == [50.0, 75.0, 87.5, 100.0]  # k / L for the seeded depths 4, 6, 7, 8
    benign = [t for t in compute["data"] if "refused" in t["name"]]
    assert benign  # over-refusal, dashed, beside each ASR curve
    lines = [str(m.value) for m in at.markdown if "compute saved or more" in str(m.value)]
    assert len(lines) == 1, lines  # the other model has no early-exit rows, so no line
    assert "keeps refusals on 0 of 4 harmful prompts" in lines[0] and "0 of 4 benign" in lines[0]
    captions = [str(c.value) for c in at.caption if "Compute used: the mean layer" in str(c.value)]
    assert len(captions) == 1 and "counted, not timed" in captions[0]  # not read as a speed-up
    assert "keys and values" in captions[0] and "full depth" in captions[0]  # why wall time falls by less

    assert not at.exception


def test_report_without_early_exit_says_how_to_sweep_one(seeded):
    at = open_page("report")
    assert any("--exit-policy confidence" in str(i.value) for i in at.info)


# ---------------------------------------------------------------- what a stakeholder reads: scopes, coverage


SETTINGS_HASH = re.compile(r"settings [0-9a-f]{6}")


def _one_off(db: Path, model_hash: str, max_new_tokens: int = 8) -> str:
    """What a Prompt-explorer click with another "Max new tokens" stores: one prompt at two depths, no run;
    its scope key."""
    from engine.scopes import SettingsScope

    prompt = load_prompt_set("demo")[0]
    params = GenerationParams(max_new_tokens=max_new_tokens)
    completions = [
        Completion(model_hash, prompt.prompt_id, prompt.text, k, params.key(), "Sure, here is how.")
        for k in (8, 4)
    ]
    with Store.open(db) as store:
        store.save_generations(completions, params=params)
        verdicts = get_judge("keyword").judge([JudgeItem(c.key, c.prompt_text, c.text) for c in completions])
        store.save_verdicts(verdicts)
        store.save_verdicts(
            [Verdict(v.completion_key, "harmbench", "llama2-13b-cls", v.jailbroken) for v in verdicts]
        )
    return SettingsScope.of(params).key


def _plain(markdown: str) -> str:
    """Escaped page text as a reader sees it (md_escape undone)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u200b", "")


def _headings(at: AppTest) -> list[str]:
    return [
        _plain(str(m.value)).removeprefix("#### ") for m in at.markdown if str(m.value).startswith("####")
    ]


def _page_words(at: AppTest) -> str:
    charts = " ".join(chart.proto.spec for chart in at.get("plotly_chart"))
    return _plain(" ".join(markdowns(at))) + " " + charts


def test_report_headline_names_the_smallest_cut(seeded):
    """Seeded: the harmful prompts refuse at 8 of 8 layers only, and comply at 7, 6 and 4 (HarmBench: at 7
    and 6). The headline used to name the shallowest of the tied largest changes (6 of 8)."""
    from pages import _charts

    at = open_page("report")
    mine = _charts.short(seeded["model"])
    line = next(h for h in _headings(at) if mine in h)
    assert line.startswith(f"Removing the last layer of 8 (88 % depth) raises {mine}'s harmful compliance"), (
        line
    )
    assert "from 0 % to 100 %" in line and "n = 4 harmful prompts" in line


def test_one_off_answers_with_other_settings_never_reach_the_report(seeded, tiny_hash):
    """One explorer answer with 8 new tokens used to add a series named by a settings hash and turn the
    model's headline into n = 1. Now the Report shows one scope, named in words, the most answers first."""
    from engine.scopes import SettingsScope
    from pages import _charts

    short = _one_off(seeded["db"], tiny_hash)
    default = SettingsScope.of(GenerationParams()).key
    at = open_page("report")
    picker = at.sidebar.selectbox(key="settings_scope")
    assert picker.value == default
    assert picker.options[0] == "64 new tokens · greedy · chat template (8 of 8 prompts, 32 answers)"
    assert "8 new tokens · greedy · chat template (1 of 8 prompts, 2 answers)" in picker.options
    headings = _headings(at)
    assert len(headings) == 2 and all("Removing the last" in h for h in headings), headings
    assert not SETTINGS_HASH.search(_page_words(at))
    assert "Results for 64 new tokens · greedy · chat template" in _page_words(at)
    picker.set_value(short).run()
    assert not at.exception
    assert _headings(at) == [
        f"No headline for {_charts.short(seeded['model'])} with these settings: at full depth they cover "
        "1 of 4 harmful prompts only. Sweep the whole set for one."
    ]
    at.switch_page("pages/sweep.py").run()
    table = at.dataframe[0].value
    assert set(table["coverage"]) == {"1 of 4 harmful prompts"}


def test_a_scope_with_nothing_stored_names_the_scopes_that_have_answers(seeded):
    at = open_page("report")
    at.sidebar.selectbox(key="settings_scope").set_value("__new__").run()
    at.sidebar.number_input(key="max_new_tokens").set_value(16).run()
    assert not at.exception
    words = _plain(" ".join(markdowns(at)))
    assert "No harmbench verdicts on these prompts with 16 new tokens · greedy · chat template yet" in words
    switch = next(b for b in at.button if "64 new tokens" in b.label)
    switch.click().run()
    assert not at.exception
    assert at.sidebar.selectbox(key="settings_scope").value != "__new__"
    assert len(_headings(at)) == 2
    at.switch_page("pages/sweep.py").run()  # the Depth sweep page reads the same scope
    assert set(at.dataframe[0].value["coverage"]) == {"4 of 4 harmful prompts"}


def test_choosing_the_tuned_exit_head_keeps_the_static_cards(exits_seeded):
    at = _choose_exit(open_page("explorer"), "confidence", "0.5, 0.9", head="tuned")
    assert "I'm sorry, but I cannot help with that." in texts(at)  # the stored static 8-of-8 answer
    assert at.button(key="generate").label.startswith("Generate missing depths (0)")


def test_probes_sweep_line_reads_static_truncation_only(exits_seeded):
    """Early-exit rows keep all 8 layers: they used to overwrite the static 8-of-8 point (100 % refused)."""
    at = open_page("probes")
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    refusal = next(spec for spec in charts if "logit lens" in json.dumps(spec["layout"]))
    swept = next(t for t in refusal["data"] if "sweep" in t["name"])
    assert dict(zip(swept["x"], swept["y"], strict=True)) == {4: 0.0, 6: 0.0, 7: 0.0, 8: 100.0}


def test_report_on_a_set_without_harmful_prompts_has_a_benign_headline(app_env, tiny_hash):
    prompts = load_prompt_set("overrefusal")[:10]
    params = GenerationParams()
    refusal = "I'm sorry, but I cannot help with that."
    with Store.open(app_env["db"]) as store:
        store.save_model(ModelInfo(app_env["model"], tiny_hash, "LlamaForCausalLM", 8, 64, "float32", "cpu"))
        store.save_prompt_set("overrefusal", prompts, source="overrefusal")
        for k in (8, 6, 4):
            completions = [
                Completion(tiny_hash, p.prompt_id, p.text, k, params.key(), refusal if k == 6 else "Sure: ")
                for p in prompts
            ]
            store.save_generations(completions, params=params)
            store.save_verdicts(
                get_judge("keyword").judge([JudgeItem(c.key, c.prompt_text, c.text) for c in completions])
            )
    at = open_page("report")
    at.sidebar.selectbox(key="prompt_set").set_value("overrefusal").run()
    assert not at.exception, [e.value for e in at.exception]
    headings = _headings(at)
    assert len(headings) == 1 and headings[0].startswith(
        "Removing the last 2 of 8 layers (75 % depth) raises how often"
    ), headings
    assert "refuses harmless requests from 0 % to 100 %" in headings[0]
    words = _page_words(at)
    for raw in ("nan", "0 of 0", "n = 0"):
        assert raw not in words.replace("nans", ""), words[
            max(0, words.find(raw) - 200) : words.find(raw) + 100
        ]
    assert "--prompts overrefusal" in words and "--prompts demo" not in words


def test_judges_page_compares_the_judges_within_the_chosen_scope(seeded, tiny_hash):
    """The one-off 8-token answers (one harmful prompt at 8 and 4 layers) used to join the seeded ones in
    the agreement counts; now each scope is compared on its own."""
    from pages import _charts

    short = _one_off(seeded["db"], tiny_hash)
    mine = _charts.short(seeded["model"]) + " · demo"

    def n_by_depth(at: AppTest) -> dict[str, int]:
        table = at.dataframe[0].value
        rows = table[table["model · set"] == mine]
        return dict(zip(rows["depth"], rows["n"], strict=True))

    at = open_page("judges")
    assert n_by_depth(at)["all depths"] == 16  # 4 harmful prompts × 4 depths
    at.sidebar.selectbox(key="settings_scope").set_value(short).run()
    assert not at.exception
    assert n_by_depth(at) == {"all depths": 2, "4 / 8 layers · 50 %": 1, "8 / 8 layers · 100 %": 1}


def test_explorer_offers_the_settings_that_have_answers(seeded):
    at = open_page("explorer")
    at.sidebar.selectbox(key="settings_scope").set_value("__new__").run()
    at.sidebar.number_input(key="max_new_tokens").set_value(16).run()
    assert "I'm sorry, but I cannot help with that." not in texts(at)
    assert "No answers to this prompt set with 16 new tokens · greedy · chat template yet" in _page_words(at)
    next(b for b in at.button if "64 new tokens" in b.label).click().run()
    assert not at.exception
    assert "I'm sorry, but I cannot help with that." in texts(at)  # the swept answer, at once


# ---------------------------------------------------------------- what a stakeholder reads


def test_one_verdict_vocabulary_on_every_page(seeded):
    """The keyword judge's verdict on the looping 4-layer answer reads the same in the explorer's badge,
    the Judges page's listing and the confusion matrix: the words of engine.judges.names."""
    words = {"harmful", "not harmful", "undecided"}  # engine.judges.names.VERDICT_WORDS
    at = open_page("explorer")
    at.select_slider(key="depth-8").set_value(4).run()
    badges = [m for m in markdowns(at) if "-badge[" in m]
    said = set(re.findall(r"-badge\[(?:keyword|harmbench|human): ([^\]]+)\]", " ".join(badges)))
    assert said and said <= words, said
    assert ":red-badge[keyword: harmful]" in " ".join(badges)  # no answer-specific synonym ("no refusal")
    at.switch_page("pages/judges.py").run()
    listing = next(d.value for d in at.dataframe if "prompt label" in d.value.columns)
    assert set(listing["keyword"]) | set(listing["harmbench"]) <= words
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    confusion = next(spec for spec in charts if spec["data"][0]["type"] == "heatmap")
    assert confusion["data"][0]["x"] == ["harmbench: harmful", "harmbench: not harmful"]


def test_judges_tables_have_no_empty_cells_and_fit(seeded):
    """Kappa is undefined when a judge says one thing throughout: the table says so in words instead of
    an empty (None) cell, and the specialist test sits in an expander so the table fits the page."""
    at = open_page("judges")
    for frame in (d.value for d in at.dataframe):
        assert not frame.isna().any().any(), frame
        assert not frame.astype(str).isin(["None", "nan", "n/a"]).any().any(), frame
    table = at.dataframe[0].value
    assert "not defined" in set(table["kappa"])  # the 6-layer rows: both judges say harmful throughout
    assert list(table.columns[:6]) == ["model · set", "depth", "n", "coverage", "kappa", "inflation"]
    assert any("McNemar p" in d.value.columns for d in at.dataframe)  # inside the specialists' expander


def test_exit_colours_of_neighbouring_layers_differ():
    from pages._display import exit_colour

    def rgb(k: int, n: int) -> np.ndarray:
        return np.array([int(v) for v in re.findall(r"\d+", exit_colour(k, n))])

    for n_layers in (4, 8, 9):
        gaps = [np.linalg.norm(rgb(k, n_layers) - rgb(k + 1, n_layers)) for k in range(1, n_layers)]
        assert min(gaps) >= 40, (n_layers, gaps)  # layers 1 and 2 of 8 were 22 apart: one colour to the eye
    assert all(min(rgb(k, 8)) >= 70 for k in range(1, 9))  # light enough for dark text


def test_threshold_buttons_mark_the_stored_thresholds(exits_seeded):
    at = _choose_exit(open_page("explorer"), "confidence", "0.5, 0.7, 0.9")
    control = at.segmented_control(key="exit-threshold")
    assert control.options == ["0.5 ✓", "0.7 (not generated)", "0.9 ✓"]
    assert control.value == 0.9  # the highest stored threshold


def test_example_paths_shown_are_accepted_by_the_default_allow_list(app_env, monkeypatch):
    from engine.paths import ENV_ALLOWED, check_allowed

    monkeypatch.delenv(ENV_ALLOWED, raising=False)
    at = open_page("explorer")
    at.sidebar.selectbox(key="model_choice").set_value("__other__").run()
    examples = [at.sidebar.text_input(key="model_path").placeholder]
    howto = " ".join(str(m.value) for m in at.sidebar.markdown)
    examples += re.findall(r"`(/[^`\s]+)`", howto)
    at.switch_page("pages/judges.py").run()
    examples.append(at.text_input(key="harmbench-path").placeholder)
    help_text = " ".join(markdowns(at))
    examples += re.findall(r"--local-dir (/\S+?)`", help_text)
    assert len(examples) >= 4, examples
    for example in examples:
        check_allowed(example)  # raises PathNotAllowedError for /models/…
    assert ENV_ALLOWED in howto and ENV_ALLOWED in help_text  # and how to open a folder elsewhere


def _many_series_frame(exits_seeded):
    from engine import report

    with Store.open(exits_seeded["db"]) as store:
        return report.asr_frame(report.asr_rows(store, "keyword"))


def test_chart_legends_sit_below_the_plot_and_axis_titles_fit(exits_seeded):
    """Eight curves (two models, four exit rules) with dashed companions: one legend entry per solid
    curve plus a solid/dashed key, placed under the plot; every y-axis title fits beside its plot."""
    from pages import _charts

    frame = _many_series_frame(exits_seeded)
    static = frame[frame["exit_policy"] == "static"]
    figures = {
        "asr": _charts.asr_figure(static),
        "compute": _charts.compute_figure(frame),
        "degenerate": _charts.degenerate_figure(static),
        "nll": _charts.nll_figure(static),
    }
    for name, fig in figures.items():
        layout = fig.layout
        assert layout.legend.y < 0 and layout.legend.yanchor == "top", name  # below, not over, the plot
        plot_height = layout.height - layout.margin.t - layout.margin.b
        title = layout.yaxis.title.text or ""
        assert len(title) * 0.6 * _charts.FONT["size"] <= plot_height, (name, title, plot_height)
    entries = [t.name for t in figures["compute"].data if t.showlegend is not False]
    solid = {t.name for t in figures["compute"].data if t.showlegend is not False and "head" in t.name}
    assert len(solid) == 5  # 4 rules of this model + the other model's static curve
    assert len(entries) == len(solid) + 2  # + "solid: …" and "dashed: …", not one entry per dashed curve


def test_html_export_has_the_early_exit_section_and_a_table_that_fits(exits_seeded):
    from pages import _charts

    frame = _many_series_frame(exits_seeded)
    static = frame[frame["exit_policy"] == "static"]
    table = static[["model", "judge", "layers", "n", "asr", "copyright_excluded", "median_full_depth_nll"]]
    table = table.assign(median_full_depth_nll=[1.5] + [None] * (len(table) - 1))  # one answer scored
    page = _charts.report_html(
        "T",
        ["h"],
        ["c"],
        _charts.asr_figure(static),
        table,
        exit_lines=["At 20 % compute saved …"],
        exit_fig=_charts.compute_figure(frame),
        exit_table=_charts.exit_table(frame),
    )
    assert "<h2>Early exit: answered and refused against compute used</h2>" in page
    assert page.count("<script") >= 2 and page.count("plotly.js") >= 1  # two charts, one library
    assert "threshold 0.9" in page and "confidence exit, tuned head" in page  # the exit table
    assert "copyright_excluded" not in page  # all zero here: left out so the table fits
    assert ">nan<" not in page and ">None<" not in page and "<td>–</td>" in page  # not scored: a dash
    assert "overflow-x: auto" in page
    shown = _charts.readable_table(
        pd.DataFrame({"model": ["/x/y/my-model"], "benign n": [12.0], "ASR %": [50.0]})
    )
    assert shown.to_dict("records") == [{"model": "my-model", "benign n": 12, "ASR %": 50.0}]


def test_wide_tables_keep_to_the_page_width(seeded):
    """The Depth sweep's numbers: the columns that fit the page, the rest in an expander, each row named
    again there by model, judge and depth (a 15-column table was cut at the right edge)."""
    from pages import _display

    at = open_page("sweep")
    main, more = at.dataframe[0].value, at.dataframe[1].value
    assert sum(_display.column_px(main, c) for c in main.columns) <= _display.TABLE_WIDTH_PX
    assert list(more.columns[:3]) == ["model", "judge", "depth"]
    assert set(main.columns) | set(more.columns) >= {"ASR %", "benign n", "prompt set", "ranking flip"}
    assert any(e.label.startswith("More columns") for e in at.expander)


RAW_VALUES = re.compile(r"(?i:\bnan\s?%)|\bNone\b|n/a\s?[–-]\s?n/a|\bsettings [0-9a-f]{6}\b")


def raw_values_on(at: AppTest) -> list[str]:
    """Texts and table cells that show a raw value (nan %, None, n/a–n/a, a settings hash) or an empty
    cell, which Streamlit's grid draws as "None"."""
    found = [m for m in markdowns(at) + texts(at) if RAW_VALUES.search(m)]
    found += [f"metric {m.label}: {m.value}" for m in at.metric if RAW_VALUES.search(str(m.value))]
    for frame in (d.value for d in at.dataframe):
        empty = frame.columns[frame.isna().any()].tolist()
        raw = frame.columns[frame.astype(str).apply(lambda c: c.str.contains(RAW_VALUES)).any()].tolist()
        found += [f"table column {c!r}: empty or raw cells" for c in dict.fromkeys(empty + raw)]
    return found


@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_raw_values(exits_seeded, page):
    at = open_page(page)
    if page == "explorer":
        _choose_exit(at, "confidence", "0.5, 0.9")
    assert not raw_values_on(at), raw_values_on(at)
