"""What the pages say about models and coverage: a model is named for people on every page (never by a
path; two models of one name told apart; the exact id in a tooltip and the Report's notes), the Judges
agreement table says how much of the set its rows cover, and the category heatmap's labels fit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from test_app_pages import (  # noqa: F401
    _headings,
    _one_off,
    _page_words,
    _plain,
    app_env,
    navigation_only,
    open_page,
    seed_store,
    tiny_hash,
)

from engine.modelfiles import DEMO_MODEL_DIR

DEMO_PATH = "data/models/depthscope-demo"  # the demo model's folder, as a user types it


def _charts(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_every_page_names_a_model_given_by_path_as_people_do(app_env, tiny_hash):  # noqa: F811
    """The second model is the demo model's folder: it used to appear as "data/models/depthscope-demo"
    in the headline, the tables and the legends."""
    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"], other_id=DEMO_PATH)
    at = open_page("report")
    at.radio(key="report-judge").set_value("keyword").run()
    demo = [h for h in _headings(at) if "DepthScope demo model" in h]
    assert demo and demo[0].startswith("Removing the last layer of 8"), _headings(at)
    assert "DepthScope demo model's harmful compliance" in demo[0]
    legends = [t.get("name", "") for spec in _charts(at) for t in spec["data"]]
    assert any(name.startswith("DepthScope demo model · ") for name in legends), legends
    words = _page_words(at)
    assert f"DepthScope demo model is {DEMO_PATH}" in words  # the exact id, in the notes
    assert DEMO_PATH not in " ".join(_headings(at)) + " ".join(legends)

    sweep = open_page("sweep")
    table = next(d.value for d in sweep.dataframe if "coverage" in d.value.columns)
    assert "DepthScope demo model" in set(table["model"]) and DEMO_PATH not in set(table["model"])

    judges = open_page("judges")
    models = set(judges.dataframe[0].value["model · set"])
    assert "DepthScope demo model · demo" in models, models


def test_two_models_of_one_name_are_told_apart_not_shown_as_paths(app_env, tiny_hash):  # noqa: F811
    """A second checkpoint folder with the same name as the first, elsewhere: both used to be drawn as one
    name (legends) or shown by their whole paths (headlines)."""
    mine = Path(app_env["model"])
    twin = str(Path("/srv/checkpoints") / mine.name)
    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"], other_id=twin)
    at = open_page("report")
    at.radio(key="report-judge").set_value("keyword").run()
    lines = _headings(at)
    assert len(lines) == 2 and not any(str(mine) in line or twin in line for line in lines), lines
    names = [line.split("raises ")[-1].split("'s harmful")[0] for line in lines]
    assert len(set(names)) == 2 and all(name.endswith(mine.name) for name in names), names
    legends = {t.get("name") for t in _charts(at)[0]["data"] if t.get("name")}
    assert len({name.split(" · ")[0] for name in legends if " · " in name}) == 2, legends
    assert f"is {twin}" in _page_words(at) and f"is {mine}" in _page_words(at)


def test_the_chosen_model_is_named_in_the_sidebar_with_its_id_in_the_tooltip(app_env, tiny_hash):  # noqa: F811
    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"], other_id=DEMO_PATH)
    at = open_page("explorer")
    picker = at.sidebar.selectbox(key="model_choice")
    labels = list(picker.options)  # AppTest lists the options as the menu shows them
    demo_labels = [label for label in labels if label.startswith("DepthScope demo model")]
    assert len(demo_labels) == 1 and Path(app_env["model"]).name in labels, labels  # its folder, listed once
    assert DEMO_PATH not in labels and str(DEMO_MODEL_DIR) not in labels and app_env["model"] not in labels
    assert app_env["model"] in _plain(picker.help)  # the exact id of the model in use


def test_judges_agreement_rows_carry_coverage(app_env, tiny_hash):  # noqa: F811
    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"])
    short = _one_off(app_env["db"], tiny_hash)  # one harmful prompt at 8 and 4 layers, other settings
    at = open_page("judges")
    table = at.dataframe[0].value
    assert list(table.columns[:4]) == ["model · set", "depth", "n", "coverage"]
    assert set(table["coverage"]) == {"4 of 4 harmful prompts"}  # the seeded 8-prompt set: 4 harmful
    assert any("Every row covers every harmful prompt" in str(c.value) for c in at.caption)

    at.sidebar.selectbox(key="settings_scope").set_value(short).run()
    table = at.dataframe[0].value
    assert set(table["coverage"]) == {"1 of 4 harmful prompts"}
    note = next(str(c.value) for c in at.caption if "cover only part" in str(c.value))
    assert "3 of 3 rows" in note.replace("\\", "")


def test_category_heatmap_labels_fit_and_the_hover_says_them_in_full():
    from pages import _charts

    long_category = "Hate, harassment and discrimination"
    method = "confidence exit ≥ 0.9, from layer 3 (tuned head)"
    cells = pd.DataFrame(
        [
            {"category": long_category, "family": "truncation", "method": "truncation at 6 of 8 layers",
             "method_short": "6/8", "layers": 6, "n_layers": 8, "compute_fraction": 0.75, "n": 6,
             "jailbroken": 3},
            {"category": "misinformation_disinformation", "family": "early exit", "method": method,
             "method_short": "conf 0.9 tuned", "layers": 8, "n_layers": 8, "compute_fraction": 0.6, "n": 6,
             "jailbroken": 1},
        ]
    )  # fmt: skip
    fig = _charts.category_heatmap(cells)
    cells_trace = next(t for t in fig.data if t.text is not None)
    for label in [*cells_trace.x, *cells_trace.y]:
        lines = label.split("<br>")
        assert len(lines) <= 2 and all(len(line) <= 18 for line in lines), label
    assert "conf 0.9 tuned" in cells_trace.x
    hover = {tuple(cell) for row in cells_trace.customdata for cell in row}
    assert ("Hate, harassment and discrimination", "confidence exit ≥ 0.9, from layer 3 (tuned head)") in {
        (a.replace("&amp;", "&"), b) for a, b in hover
    }
    assert "%{customdata[0]}" in cells_trace.hovertemplate


def test_wrapped_labels_break_at_word_ends_and_say_when_cut():
    from pages._charts import wrap_label

    assert wrap_label("illegal") == ["illegal"]
    assert wrap_label("misinformation_disinformation") == ["misinformation_", "disinformation"]
    assert wrap_label("Hate, harassment and discrimination") == ["Hate, harassment", "and discrimination"]
    cut = wrap_label("a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j")
    assert len(cut) == 2 and cut[-1].endswith("…") and all(len(line) <= 18 for line in cut)


def test_the_html_export_names_models_as_the_pages_do(app_env, tiny_hash):  # noqa: F811
    from engine import report
    from engine.store import Store
    from pages import _charts

    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"], other_id=DEMO_PATH)
    with Store.open(app_env["db"]) as store:
        rows = report.asr_rows(store, "keyword")
    frame = report.asr_frame(rows)
    note = report.models_note([r.model for r in rows])
    page = _charts.report_html("T", ["h"], [note], _charts.asr_figure(frame), frame)
    table = page[page.index("<table") :]
    assert "DepthScope demo model" in table and DEMO_PATH not in table
    assert f"DepthScope demo model is {DEMO_PATH}" in page  # the exact id, in the notes


def test_the_keyword_inflation_caveat_names_model_set_and_coverage(app_env, tiny_hash):  # noqa: F811
    """The Report's caveat under the keyword judge gives each measured inflation with what it rests on."""
    seed_store(app_env["db"], app_env["model"], tiny_hash, app_env["activations"])
    at = open_page("report")
    at.radio(key="report-judge").set_value("keyword").run()
    words = _page_words(at).replace("\\", "")
    caveat = next(line for line in words.split("\n") if "its ASR is" in line)
    name = Path(app_env["model"]).name
    assert f"× the HarmBench classifier's for {name} on " in caveat, caveat
    assert "answers at all depths, from 4 of 4 harmful prompts)" in caveat, caveat
