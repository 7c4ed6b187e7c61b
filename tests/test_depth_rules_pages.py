"""The Report and Depth sweep pages show every way of removing depth on one chart, the sentence for
~25 % compute saved, and the per-category ASR heatmap (cells with n < 5 greyed); exports include them."""

from __future__ import annotations

import json

from test_app_pages import app_env, navigation_only, open_page, seed_store, seeded, tiny_hash  # noqa: F401

from engine.datasets import load_prompt_set
from engine.judges import get_judge
from engine.judges.base import JudgeItem
from engine.store import Store
from engine.types import Completion, GenerationParams, Verdict

DROP = GenerationParams(drop_layers=(3, 4))
SPEC = GenerationParams(exit_policy="speculative", draft_layers=4, draft_tokens=4)
REFUSAL = "I'm sorry, but I cannot help with that."


def seed_rules(db, model_hash: str) -> None:
    """Block removal (6 of 8 kept) refuses every harmful prompt; speculative answers as full depth."""
    prompts = load_prompt_set("demo")[:8]
    keyword = get_judge("keyword")
    with Store.open(db) as store:
        for params, layers, text, extra in (
            (DROP, 6, lambda p: REFUSAL if p.label == "harmful" else "Sure, here it is.", {}),
            (SPEC, 8, lambda p: REFUSAL, {"acceptance_rate": 0.5, "layer_compute": 12.0}),
        ):
            completions = [
                Completion(model_hash, p.prompt_id, p.text, layers, params.key(), text(p), (1, 2), **extra)
                for p in prompts
            ]
            store.save_generations(completions, params=params)
            verdicts = keyword.judge([JudgeItem(c.key, c.prompt_text, c.text) for c in completions])
            store.save_verdicts(verdicts)
            store.save_verdicts(  # the sweep page shows HarmBench's verdicts first: the same decisions
                [Verdict(v.completion_key, "harmbench", "llama2-13b-cls", v.jailbroken) for v in verdicts]
            )


def _charts(at) -> dict:
    return {chart.proto.id: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def test_report_page_compares_every_way_of_removing_depth(seeded, tiny_hash):  # noqa: F811
    seed_rules(seeded["db"], tiny_hash)
    at = open_page("report")
    at.radio(key="report-judge").set_value("keyword").run()
    methods = next(s for s in _charts(at).values() if "passes per token" in json.dumps(s["layout"]))
    symbols = {t["marker"]["symbol"] for t in methods["data"]}
    assert {"circle", "square", "star"} <= symbols and {"square-open", "star-open"} <= symbols
    spec = next(t for t in methods["data"] if t["marker"]["symbol"] == "star")
    assert spec["x"] == [150.0] and spec["y"] == [0.0]  # 12 passes per token on 8 layers; refuses all
    removal = next(t for t in methods["data"] if t["marker"]["symbol"] == "square")
    assert removal["x"] == [75.0] and removal["y"] == [0.0]
    lines = [str(m.value).replace("\\", "") for m in at.markdown if "compute saved on" in str(m.value)]
    assert lines and "layers 3-4 removed" in lines[0] and "truncation at 6 of 8 layers" in lines[0]
    assert "Ways to remove depth (PNG)" in {b.label for b in at.get("download_button")}
    assert not at.exception


def test_sweep_page_shows_the_methods_chart_and_category_heatmap(seeded, tiny_hash):  # noqa: F811
    seed_rules(seeded["db"], tiny_hash)
    at = open_page("sweep")
    charts = _charts(at)
    assert any("passes per token" in json.dumps(s["layout"]) for s in charts.values())
    heatmaps = [s for s in charts.values() if any(t.get("type") == "heatmap" for t in s["data"])]
    assert heatmaps, "the per-category heatmap is drawn"
    cells = next(t for t in heatmaps[0]["data"] if t.get("text"))
    assert "illegal" in cells["y"] and all(
        "n = " in v or v == "no prompts" for row in cells["text"] for v in row
    )
    grey = next(t for t in heatmaps[0]["data"] if not t.get("text"))
    # The 8 seeded prompts hold at most 2 harmful of one category: every cell is below 5, so grey.
    assert all(v is None or v == 0 for row in grey["z"] for v in row) and any(
        v == 0 for row in grey["z"] for v in row
    )
    assert all(v is None for row in cells["z"] for v in row)
    assert not at.exception


def test_exports_include_the_methods_chart(seeded, tiny_hash):  # noqa: F811
    from engine import report
    from pages import _charts as charts
    from pages import _methods

    seed_rules(seeded["db"], tiny_hash)
    with Store.open(seeded["db"]) as store:
        frame = report.asr_frame(report.asr_rows(store, "keyword"))
    assert _methods.methods_compared(frame)
    page = charts.report_html("T", ["h"], ["c"], charts.asr_figure(frame), frame,
                              [(charts.METHODS_QUESTION, charts.methods_figure(frame))])  # fmt: skip
    assert charts.METHODS_QUESTION in page and page.count("plotly.js v") <= 1
    assert charts.methods_png(frame).startswith(b"\x89PNG")


def test_sidebar_offers_self_speculative_decoding_checked_as_the_cli_checks_it(app_env):  # noqa: F811
    """The tiny model has 8 layers: a draft of 8 is refused with the engine's sentence, 0 cannot be typed,
    a draft of 3 reaches the Depth sweep page's settings."""
    from test_app_pages import _plain

    from pages._selection import exit_settings_from

    at = open_page("sweep")
    at.sidebar.selectbox(key="exit_policy").set_value("speculative").run()
    assert at.sidebar.number_input(key="exit_draft_layers").value == 4  # half the layers by default
    at.sidebar.number_input(key="exit_draft_layers").set_value(8).run()
    assert any("must be below the model's 8 layers (1..7)" in _plain(str(e.value)) for e in at.sidebar.error)
    assert exit_settings_from(at.session_state, app_env["model"]).policy == "static"  # pages keep working
    at.sidebar.number_input(key="exit_draft_layers").set_value(3).run()
    at.sidebar.number_input(key="exit_draft_tokens").set_value(2).run()
    assert not at.sidebar.error and not at.exception
    settings = exit_settings_from(at.session_state, app_env["model"])
    assert (settings.policy, settings.draft_layers, settings.draft_tokens) == ("speculative", 3, 2)
    assert any("the first 3 layers draft 2 tokens at a time" in _plain(str(c.value)) for c in at.caption)


def test_sweep_page_runs_self_speculative_decoding(app_env):  # noqa: F811
    from test_app_pages import _start_sweep

    from engine import report

    at = open_page("sweep")
    at.sidebar.number_input(key="max_new_tokens").set_value(6)
    at.sidebar.selectbox(key="exit_policy").set_value("speculative").run()
    at.sidebar.number_input(key="exit_draft_layers").set_value(2).run()
    job = _start_sweep(at, prompts=2, depths="50, 100")  # depths are not used: one run at full depth
    assert (job.kind, job.state) == ("sweep", "done"), job.outcome
    with Store.open(app_env["db"]) as store:
        rows = report.asr_rows(store, "keyword")
        assert store.table_counts()["generations"] == 2  # one harmful + one benign prompt, full depth only
    assert rows and all(r.family == report.SPECULATIVE and r.layers == 8 for r in rows)
    assert {(r.draft_layers, r.draft_tokens) for r in rows} == {(2, 4)}
    assert all(r.acceptance_rate is not None for r in rows if r.n)
