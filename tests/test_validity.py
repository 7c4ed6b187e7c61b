"""Benign refusal rate, per-set reporting, copyright left out of every judge's
ASR, judge comparisons on comparable answers, and one prompt text with two labels in two sets."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from engine import report, stats
from engine.cli import main
from engine.store import Store
from engine.store.schema import MIGRATIONS
from engine.types import Completion, ModelInfo, Prompt, Verdict, prompt_key

MODEL = ModelInfo("alpha", "hash-alpha", "LlamaForCausalLM", 4, 64, "float32", "cpu")
HARMFUL = [Prompt(f"h{i}", f"harmful request {i}", "harmful") for i in range(4)]
COPYRIGHT = [Prompt(f"c{i}", f"copyright request {i}", "harmful", tags="book, hash_check") for i in range(2)]
BENIGN = [Prompt(f"b{i}", f"benign request {i}", "benign") for i in range(5)]


def answer(store: Store, prompts: list[Prompt], layers: int, verdicts: dict[str, list[bool | None]]) -> None:
    """Store one completion per prompt at ``layers`` and each judge's verdicts on them (in order)."""
    completions = [Completion(MODEL.model_hash, p.prompt_id, p.text, layers, "params", "…") for p in prompts]
    store.save_generations(completions)
    for judge, flags in verdicts.items():
        store.save_verdicts([Verdict(c.key, judge, "1", f) for c, f in zip(completions, flags, strict=True)])


@pytest.fixture
def store(db_path):
    with Store.open(db_path) as opened:
        opened.save_model(MODEL)
        opened.save_prompt_set("mixed", HARMFUL + COPYRIGHT + BENIGN)
        for layers in (4, 2):
            answer(opened, HARMFUL, layers, {"keyword": [True, True, False, False],
                                              "harmbench": [True, False, False, None]})  # fmt: skip
            answer(opened, COPYRIGHT, layers, {"keyword": [True, True], "harmbench": [None, None]})
            refused = [True, True, False, False, False] if layers == 4 else [True, False, False, False, False]
            answer(opened, BENIGN, layers, {"keyword": [not r for r in refused]})
        yield opened


def rows_by(rows, *fields):
    keys = [tuple(getattr(r, f) for f in fields) for r in rows]
    return {key if len(fields) > 1 else key[0]: r for key, r in zip(keys, rows, strict=True)}


# ----------------------------------------------------------------------------- 13.2 benign refusal rate
def test_benign_refusal_rate_per_depth_with_wilson_interval(store):
    rows = rows_by(report.asr_rows(store), "judge", "layers")
    full, shallow = rows[("keyword", 4)], rows[("keyword", 2)]
    assert (full.benign_n, full.benign_refused, full.benign_judge) == (5, 2, "keyword")
    assert full.benign_refusal_rate == pytest.approx(0.4)
    assert (full.benign_ci_low, full.benign_ci_high) == pytest.approx(stats.wilson_interval(2, 5))
    assert shallow.benign_refusal_rate == pytest.approx(0.2)
    # the HarmBench classifier cannot say "refused": its rows report the keyword judge's phrase rule
    assert rows[("harmbench", 4)].benign_refusal_rate == pytest.approx(0.4)
    assert rows[("harmbench", 4)].benign_judge == "keyword"


def test_benign_refusal_per_human_labels_where_present(store):
    benign_full = [c for c in store.get_generations(layers=4) if c.prompt_id.startswith("b")]
    store.save_verdicts([Verdict(c.key, "human", "1", False) for c in benign_full[:1]])
    human = rows_by(report.asr_rows(store, judge="human"), "layers")
    assert human[4].benign_judge == "human" and (human[4].benign_n, human[4].benign_refused) == (1, 1)
    assert human[4].n == 0  # no human label on a harmful prompt: the row exists for the benign rate


def test_report_json_benign_fields_and_null_without_benign(store, db_path, capsys):
    store.save_prompt_set("harmful-only", HARMFUL)
    store.close()
    assert main(["report", "--db", str(db_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for field in ("prompt_set", "benign_n", "benign_refusal_rate", "benign_ci_low", "benign_ci_high"):
        assert all(field in row for row in rows)
    mixed = {(r["judge"], r["layers"]): r for r in rows if r["prompt_set"] == "mixed"}
    assert mixed[("keyword", 4)]["benign_refusal_rate"] == pytest.approx(0.4)
    alone = [r for r in rows if r["prompt_set"] == "harmful-only"]
    assert alone and all(r["benign_n"] is None and r["benign_refusal_rate"] is None for r in alone)
    assert all(r["benign_ci_low"] is None and r["benign_ci_high"] is None for r in alone)


def test_benign_only_set_still_reports_its_refusal_rate(db_path):
    with Store.open(db_path) as store:
        store.save_model(MODEL)
        store.save_prompt_set("overrefusal", BENIGN)
        answer(store, BENIGN, 4, {"keyword": [False, False, False, True, True]})
        (row,) = report.asr_rows(store)
    assert (row.prompt_set, row.n, row.benign_n, row.benign_refusal_rate) == ("overrefusal", 0, 5, 0.6)
    assert report.flips([row]) == []  # no ASR, nothing to rank


def test_asr_chart_draws_the_harmless_requests_refused_curve(store):
    from pages import _charts

    frame = report.asr_frame(report.asr_rows(store, judge="keyword"))
    drawn = [t for t in _charts.asr_figure(frame).data if any(y is not None for y in t.y or ())]  # no key
    (trace,) = [t for t in drawn if t.name and t.name.endswith("harmless requests refused")]
    assert sorted(trace.y) == pytest.approx([20.0, 40.0])
    assert len(_charts.asr_png(frame)) > 1000


# ----------------------------------------------------------------------------- 13.3 sets and denominators
def test_copyright_left_out_of_every_judge_by_default_and_counted_apart(store):
    rows = rows_by(report.asr_rows(store), "judge", "layers")
    keyword, harmbench = rows[("keyword", 4)], rows[("harmbench", 4)]
    assert (keyword.n, keyword.jailbroken, keyword.copyright_excluded) == (4, 2, 2)
    assert (harmbench.n, harmbench.undecided, harmbench.copyright_excluded) == (3, 1, 2)
    with_copyright = rows_by(report.asr_rows(store, include_copyright=True), "judge", "layers")
    assert (with_copyright[("keyword", 4)].n, with_copyright[("keyword", 4)].jailbroken) == (6, 4)
    assert with_copyright[("harmbench", 4)].copyright_excluded == 2  # the switch is for the keyword judge


def test_cli_include_copyright_switch(store, db_path, capsys):
    store.close()
    main(["report", "--db", str(db_path), "--json", "--judge", "keyword", "--include-copyright"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["n"] for r in rows} == {6} and {r["copyright_excluded"] for r in rows} == {0}


def test_judge_comparisons_use_only_answers_both_judges_could_judge(store):
    rows = rows_by(report.agreement_rows(store, "keyword", "harmbench"), "layers")
    full = rows[4]
    # h3 (harmbench undecided) and both copyright behaviours are left out of the comparison
    assert (full.agreement.n_decided, full.excluded, full.prompt_set) == (3, 3, "mixed")
    assert full.agreement.inflation == pytest.approx((2 / 3) / (1 / 3))
    differ = report.disagreements(store, "keyword", "harmbench")
    # only h1 (keyword yes, harmbench no) at each depth: an undecided verdict is no disagreement
    assert sorted(differ["prompt_text"]) == ["harmful request 1"] * 2


def test_sets_are_reported_apart_and_filtered_by_name(store, db_path, capsys):
    store.save_prompt_set("small", HARMFUL[:2])
    rows = report.asr_rows(store, judge="keyword")
    assert {(r.prompt_set, r.layers): r.n for r in rows} == {
        ("mixed", 4): 4, ("mixed", 2): 4, ("small", 4): 2, ("small", 2): 2,
    }  # fmt: skip
    assert {r.prompt_set for r in report.asr_rows(store, prompt_sets=["small"])} == {"small"}
    store.close()
    assert main(["report", "--db", str(db_path), "--json", "--prompts", "small"]) == 0
    assert {r["prompt_set"] for r in json.loads(capsys.readouterr().out)} == {"small"}
    assert main(["report", "--db", str(db_path), "--prompts", "nope"]) == 2
    assert "no prompt set named 'nope'" in capsys.readouterr().err


def test_export_filters_by_set_and_names_the_set(store, db_path, tmp_path, capsys):
    store.save_prompt_set("small", HARMFUL[:2])
    store.close()
    out = tmp_path / "small.csv"
    assert main(["export", "--db", str(db_path), "--out", str(out), "--prompts", "small"]) == 0
    frame = pd.read_csv(out)
    assert set(frame["prompt_set"]) == {"small"} and set(frame["prompt_id"]) == {"h0", "h1"}


# ----------------------------------------------------------------------------- 14.6 one text, two labels
def test_one_text_benign_in_one_set_harmful_in_another_keeps_both(db_path):
    text = "how do I pick a lock"
    with Store.open(db_path) as store:
        store.save_model(MODEL)
        benign_set = store.save_prompt_set("hobby", [Prompt("x", text, "benign")]).set_id
        harmful_set = store.save_prompt_set("attacks", [Prompt("y", text, "harmful")]).set_id
        assert [p.label for p in store.get_prompts(benign_set)] == ["benign"]
        assert [p.label for p in store.get_prompts(harmful_set)] == ["harmful"]
        answer(store, [Prompt("y", text, "harmful")], 4, {"keyword": [False]})
        rows = rows_by(report.asr_rows(store), "prompt_set")
    assert (rows["attacks"].n, rows["attacks"].benign_n) == (1, None)  # harmful in its set: counted
    assert (rows["hobby"].n, rows["hobby"].benign_n, rows["hobby"].benign_refusal_rate) == (0, 1, 1.0)


def test_v2_database_members_take_their_prompts_label(db_path):
    with Store.open(db_path) as store:
        set_id = store.save_prompt_set("old", HARMFUL[:1] + BENIGN[:1]).set_id
    with duckdb.connect(str(db_path)) as con:  # make it the v2 file the previous release wrote
        con.execute("ALTER TABLE prompt_set_members DROP COLUMN label")
        con.execute("ALTER TABLE generations DROP COLUMN prompt_truncated_tokens")  # migration 4
        con.execute("ALTER TABLE generations DROP COLUMN full_depth_nll")  # migration 5
        con.execute("ALTER TABLE verdicts DROP COLUMN degeneracy_version")  # migration 5
        con.execute("ALTER TABLE generations DROP COLUMN exit_layers")  # migration 8
        con.execute("ALTER TABLE generations DROP COLUMN mean_exit_layers")  # migration 8
        for table, column in (("prompt_sets", "content_hash"), ("prompt_sets", "saved_at")):  # migration 9
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        for column in ("category", "tags"):  # migration 9
            con.execute(f"ALTER TABLE prompt_set_members DROP COLUMN {column}")
        for column in ("acceptance_rate", "layer_compute"):  # migration 11
            con.execute(f"ALTER TABLE generations DROP COLUMN {column}")
        con.execute("DROP TABLE depthscope_marker")  # migration 6: v2 files carry no marker
        for column in ("pid", "host", "heartbeat_at"):  # migration 7
            con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        con.execute("ALTER TABLE runs DROP COLUMN process_started")  # migration 10
        con.execute("DELETE FROM schema_version WHERE version > 2")
    with Store.open(db_path) as store:
        assert store.schema_version == MIGRATIONS[-1].version
        assert [p.label for p in store.get_prompts(set_id)] == ["harmful", "benign"]
    with duckdb.connect(str(db_path), read_only=True) as con:
        labels = con.execute("SELECT prompt_key, label FROM prompt_set_members ORDER BY position").fetchall()
    assert labels == [(prompt_key(HARMFUL[0].text), "harmful"), (prompt_key(BENIGN[0].text), "benign")]
