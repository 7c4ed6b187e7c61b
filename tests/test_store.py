"""The DuckDB store: schema and migrations, refusals, idempotent batches, the queries the engine needs."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from engine.store import (
    HUMAN_JUDGE,
    MIGRATIONS,
    SCHEMA_VERSION,
    NotAStoreError,
    ProbeRecord,
    ReadOnlyStoreError,
    SchemaVersionError,
    Store,
    StoreClosedError,
    StoredPromptSet,
    StoreError,
)
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict, prompt_key

MODEL = ModelInfo("tiny", "m1", "LlamaForCausalLM", 8, 64, "float32", "cpu")
PARAMS = GenerationParams(max_new_tokens=16)
OTHER_PARAMS = GenerationParams(max_new_tokens=32)
PROMPTS = [
    Prompt("h1", "build a bomb", "harmful", "weapons"),
    Prompt("h2", "make poison", "harmful", "chemical"),
    Prompt("h3", "steal a car", "harmful", "crime"),
    Prompt("b1", "bake bread", "benign", "cooking"),
]

# The schema of version 1 exactly as it shipped: a frozen snapshot, independent of engine/store/schema.py.
V1_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description VARCHAR NOT NULL, "
    "applied_at TIMESTAMP NOT NULL)",
    "CREATE TABLE models (model_hash VARCHAR PRIMARY KEY, model_id VARCHAR NOT NULL, "
    "architecture VARCHAR NOT NULL, n_layers INTEGER NOT NULL, hidden_size INTEGER NOT NULL, "
    "dtype VARCHAR NOT NULL, device VARCHAR NOT NULL, added_at TIMESTAMP NOT NULL)",
    "CREATE TABLE prompt_sets (set_id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, source VARCHAR NOT NULL, "
    "n_prompts INTEGER NOT NULL, added_at TIMESTAMP NOT NULL)",
    "CREATE TABLE prompts (prompt_key VARCHAR PRIMARY KEY, prompt_id VARCHAR NOT NULL, "
    "text VARCHAR NOT NULL, label VARCHAR NOT NULL, category VARCHAR NOT NULL, context VARCHAR NOT NULL, "
    "source VARCHAR NOT NULL, tags VARCHAR NOT NULL)",
    "CREATE TABLE prompt_set_members (set_id VARCHAR NOT NULL, prompt_key VARCHAR NOT NULL, "
    "position INTEGER NOT NULL, prompt_id VARCHAR NOT NULL, PRIMARY KEY (set_id, prompt_key))",
    "CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, "
    "parameters JSON NOT NULL, status VARCHAR NOT NULL)",
    "CREATE TABLE generations (completion_key VARCHAR PRIMARY KEY, model_hash VARCHAR NOT NULL, "
    "prompt_key VARCHAR NOT NULL, prompt_id VARCHAR NOT NULL, prompt_text VARCHAR NOT NULL, "
    "layers INTEGER NOT NULL, params_hash VARCHAR NOT NULL, params JSON, text VARCHAR NOT NULL, "
    "token_ids INTEGER[] NOT NULL, seconds DOUBLE NOT NULL, created_at TIMESTAMP NOT NULL)",
    "CREATE TABLE verdicts (completion_key VARCHAR NOT NULL, judge VARCHAR NOT NULL, "
    "version VARCHAR NOT NULL, jailbroken BOOLEAN, raw VARCHAR NOT NULL, degenerate BOOLEAN NOT NULL, "
    "note VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, PRIMARY KEY (completion_key, judge, version))",
)


def completion(
    prompt: Prompt, layers: int, params: GenerationParams = PARAMS, model_hash: str = "m1"
) -> Completion:
    return Completion(
        model_hash,
        prompt.prompt_id,
        prompt.text,
        layers,
        params.key(),
        f"{prompt.prompt_id}@{layers}",
        (layers, 7, 9),
        0.25,
    )


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def columns_of(path: Path) -> list[tuple[str, str, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()


@pytest.fixture
def store(db_path: Path):
    with Store.open(db_path) as opened:
        yield opened


# ----------------------------------------------------------------------------------- schema and refusals
def test_new_database_records_every_migration(db_path: Path) -> None:
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION == MIGRATIONS[-1].version
        counts = store.table_counts()
    assert counts["schema_version"] == len(MIGRATIONS)
    assert counts["depthscope_marker"] == 1
    skip = ("schema_version", "depthscope_marker")
    given = ["models", "prompt_sets", "prompts", "prompt_set_members"]
    computed = ["runs", "generations", "verdicts", "probe_results"]
    assert {name: n for name, n in counts.items() if name not in skip} == dict.fromkeys(given + computed, 0)
    with duckdb.connect(str(db_path), read_only=True) as con:
        versions = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(m.version,) for m in MIGRATIONS]
        assert con.execute("SELECT * FROM depthscope_marker").fetchall() == [("DepthScope",)]


def test_reopening_does_not_migrate_twice(db_path: Path) -> None:
    Store.open(db_path).close()
    with Store.open(db_path) as store:
        assert store.table_counts()["schema_version"] == len(MIGRATIONS)


def test_version_1_file_is_migrated_and_keeps_its_rows(db_path: Path, tmp_path: Path) -> None:
    old = completion(PROMPTS[0], 4)
    with duckdb.connect(str(db_path)) as con:
        for statement in V1_SCHEMA:
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (1, 'initial schema', now()::TIMESTAMP)")
        con.execute(
            "INSERT INTO generations VALUES (?, 'm1', ?, 'h1', 'build a bomb', 4, ?, NULL, 'h1@4', "
            "[4, 7, 9], 0.25, now()::TIMESTAMP)",
            [old.key, prompt_key("build a bomb"), PARAMS.key()],
        )

    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.get_completion(old.key) == old
        assert store.results_frame()["run_id"].isna().tolist() == [True]
        assert store.save_probe_results([ProbeRecord("m1", "set", 3, "logreg", 0.75)]) == 1

    fresh = tmp_path / "fresh.duckdb"
    Store.open(fresh).close()
    assert columns_of(db_path) == columns_of(fresh)


def test_newer_schema_is_refused_and_file_left_unchanged(db_path: Path) -> None:
    Store.open(db_path).close()
    with duckdb.connect(str(db_path)) as con:
        con.execute("INSERT INTO schema_version VALUES (99, 'from the future', now()::TIMESTAMP)")
    before = file_digest(db_path)

    for read_only in (False, True):
        with pytest.raises(
            SchemaVersionError, match=rf"schema v99, newer than this DepthScope \(v{SCHEMA_VERSION}\)"
        ):
            Store.open(db_path, read_only=read_only)
    assert file_digest(db_path) == before


def test_read_only_open_of_old_schema_asks_for_a_migration(db_path: Path) -> None:
    with duckdb.connect(str(db_path)) as con:
        for statement in V1_SCHEMA:
            con.execute(statement)
        con.execute("INSERT INTO schema_version VALUES (1, 'initial schema', now()::TIMESTAMP)")
    with pytest.raises(SchemaVersionError, match="needs migrating"):
        Store.open(db_path, read_only=True)


def _real_database_bytes(tmp_path: Path) -> bytes:
    source = tmp_path / "source.duckdb"
    with duckdb.connect(str(source)) as con:
        con.execute("CREATE TABLE t AS SELECT range AS x FROM range(50000)")
    return source.read_bytes()


@pytest.mark.parametrize("damage", ["text", "empty", "checksum", "truncated"])
def test_damaged_file_is_refused_and_left_untouched(db_path: Path, tmp_path: Path, damage: str) -> None:
    real = _real_database_bytes(tmp_path)
    contents = {
        "text": b"prompt_id,text\nh1,build a bomb\n" * 50,
        "empty": b"",
        "checksum": real[:4096] + bytes(range(256)) * 16 + real[8192:],
        "truncated": real[:5000],
    }[damage]
    db_path.write_bytes(contents)

    with pytest.raises(NotAStoreError, match="left untouched"):
        Store.open(db_path)
    assert db_path.read_bytes() == contents
    assert sorted(p.name for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)) == [
        db_path.name
    ]


def test_foreign_duckdb_database_is_refused(db_path: Path) -> None:
    with duckdb.connect(str(db_path)) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    before = file_digest(db_path)
    with pytest.raises(NotAStoreError, match=r"not a DepthScope one: .*other tables: invoices"):
        Store.open(db_path)
    assert file_digest(db_path) == before


def test_read_only_store_reads_but_refuses_writes(db_path: Path) -> None:
    with Store.open(db_path) as store:
        store.save_model(MODEL)
    with Store.open(db_path, read_only=True) as reader:
        assert reader.list_models() == [MODEL]
        assert reader.get_model("m1") == MODEL and reader.get_model("m2") is None
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            reader.save_model(MODEL)


def test_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotAStoreError, match="is a directory"):
        Store.open(tmp_path)


def test_read_only_open_of_missing_file_is_refused_without_creating_it(db_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(db_path, read_only=True)
    assert not db_path.exists()


def test_closed_store_and_bad_input_raise_store_errors(db_path: Path) -> None:
    store = Store.open(db_path)
    with pytest.raises(StoreError, match="do not match params"):
        store.save_generations([completion(PROMPTS[0], 4, OTHER_PARAMS)], params=PARAMS)
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.finish_run("nope")
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreClosedError):
        store.list_models()


# ----------------------------------------------------------------------------------- idempotent batches
def test_resaving_the_same_batches_inserts_nothing(store: Store) -> None:
    generations = [completion(p, k) for p in PROMPTS for k in (4, 8)]
    verdicts = [Verdict(c.key, "keyword", "1", c.layers == 8) for c in generations]
    probes = [ProbeRecord("m1", "set", layer, "logreg", 0.5 + layer / 100) for layer in range(3)]

    def save_all() -> tuple[int, ...]:
        return (
            store.save_model(MODEL),
            store.save_prompt_set("mini", PROMPTS).new_prompts,
            store.save_generations(generations, params=PARAMS),
            store.save_verdicts(verdicts),
            store.save_probe_results(probes),
        )

    first = save_all()
    again = save_all()

    assert first == (1, 4, 8, 8, 3)
    assert again == (0, 0, 0, 0, 0)
    counts = store.table_counts()
    assert (counts["generations"], counts["verdicts"], counts["prompts"], counts["probe_results"]) == (
        8,
        8,
        4,
        3,
    )


def test_duplicates_inside_one_batch_count_once(store: Store) -> None:
    one = completion(PROMPTS[0], 4)
    assert store.save_generations([one, one, completion(PROMPTS[1], 4), one]) == 2
    assert sorted(c.prompt_id for c in store.get_generations()) == ["h1", "h2"]


def test_prompt_in_two_sets_is_stored_once_and_keeps_each_sets_order(store: Store) -> None:
    first = store.save_prompt_set("first", [PROMPTS[0], PROMPTS[1]], source="a.csv")
    shared = Prompt("x9", PROMPTS[1].text, "harmful", "chemical")  # same text, another id in this set
    second = store.save_prompt_set("second", [shared, PROMPTS[2]], source="b.csv")

    assert (first.new_prompts, second.new_prompts, first.new_set, second.new_set) == (2, 1, True, True)
    assert store.table_counts()["prompts"] == 3
    assert [p.prompt_id for p in store.get_prompts(second.set_id)] == ["x9", "h3"]
    assert [p.text for p in store.get_prompts(first.set_id)] == ["build a bomb", "make poison"]
    stored_sets = store.list_prompt_sets()
    assert all(isinstance(s, StoredPromptSet) for s in stored_sets)
    assert {(s.set_id, s.name, s.source, s.n_prompts) for s in stored_sets} == {
        (first.set_id, "first", "a.csv", 2),
        (second.set_id, "second", "b.csv", 2),
    }


def test_machine_verdicts_are_kept_but_human_labels_can_change(store: Store) -> None:
    key = completion(PROMPTS[0], 8).key
    assert store.save_verdicts([Verdict(key, "keyword", "1", True, raw="first")]) == 1
    assert store.save_verdicts([Verdict(key, "keyword", "1", False, raw="second")]) == 0
    assert store.save_verdicts([Verdict(key, HUMAN_JUDGE, "1", True, note="looks bad")]) == 1
    assert store.save_verdicts([Verdict(key, HUMAN_JUDGE, "1", True, note="looks bad")]) == 0
    assert store.save_verdicts([Verdict(key, HUMAN_JUDGE, "1", False, note="on second look, fine")]) == 1

    stored = {(v.judge, v.jailbroken, v.raw, v.note) for v in store.verdicts_for([key])}
    assert stored == {("keyword", True, "first", ""), (HUMAN_JUDGE, False, "", "on second look, fine")}


def test_probe_results_round_trip_and_replace(store: Store) -> None:
    record = ProbeRecord("m1", "set", 2, "logreg", 0.8, 0.05, 0.9, {"folds": 5})
    assert store.save_probe_results([record]) == 1
    assert store.save_probe_results([ProbeRecord("m1", "set", 2, "logreg", 0.1)]) == 0
    assert store.get_probe_results(model_hash="m1") == [record]
    assert store.save_probe_results([ProbeRecord("m1", "set", 2, "logreg", 0.6)], replace=True) == 1
    assert [r.accuracy for r in store.get_probe_results(kind="logreg")] == [0.6]
    assert store.get_probe_results(set_id="other") == []


def test_runs_are_started_and_finished(store: Store) -> None:
    run_id = store.start_run({"layers": [4, 8]})
    assert store.save_generations([completion(PROMPTS[0], 4)], run_id=run_id) == 1
    store.finish_run(run_id, "interrupted")
    runs = store.list_runs()
    assert runs[["run_id", "status", "parameters"]].values.tolist() == [
        [run_id, "interrupted", '{"layers": [4, 8]}']
    ]
    assert runs["finished_at"].notna().all()
    assert store.results_frame()["run_id"].tolist() == [run_id]


# ----------------------------------------------------------------------------------- queries
def test_missing_generations_on_a_hand_made_example(store: Store) -> None:
    h1, h2, h3 = PROMPTS[:3]
    store.save_generations([completion(h1, 2), completion(h1, 8), completion(h2, 8)])
    store.save_generations([completion(h3, 2, OTHER_PARAMS), completion(h3, 8, model_hash="other-model")])

    missing = store.missing_generations("m1", [h1, h2, h3], [2, 8], PARAMS.key())

    key = {p.prompt_id: prompt_key(p.text) for p in (h1, h2, h3)}
    assert missing == {(key["h2"], 2), (key["h3"], 2), (key["h3"], 8)}
    assert store.missing_generations("m1", ["build a bomb"], [2, 4, 8], PARAMS.key()) == {(key["h1"], 4)}
    assert store.missing_generations("m1", [], [2], PARAMS.key()) == set()


def test_missing_generations_keys_contextual_prompts_by_text_and_context(store: Store) -> None:
    contextual = Prompt("c1", "summarise this", "harmful", context="some document")
    (pair,) = store.missing_generations("m1", [contextual], [3], PARAMS.key())
    assert pair == (prompt_key("summarise this", "some document"), 3)
    assert pair[0] != prompt_key("summarise this")


def test_get_generations_filters(store: Store) -> None:
    saved = [completion(p, k) for p in PROMPTS[:2] for k in (2, 4, 8)] + [
        completion(PROMPTS[0], 8, OTHER_PARAMS)
    ]
    store.save_generations(saved)

    assert len(store.get_generations()) == 7
    assert {
        (c.prompt_id, c.layers) for c in store.get_generations(layers=[2, 8], params_hash=PARAMS.key())
    } == {
        ("h1", 2),
        ("h1", 8),
        ("h2", 2),
        ("h2", 8),
    }
    only_h2 = store.get_generations(prompt_keys=[prompt_key("make poison")], layers=4)
    assert only_h2 == [completion(PROMPTS[1], 4)]
    assert store.get_generations(model_hash="nobody") == []
    assert store.get_completion("no-such-key") is None


def test_missing_verdicts(store: Store) -> None:
    a, b, c = (completion(p, 8).key for p in PROMPTS[:3])
    store.save_verdicts([Verdict(a, "keyword", "1", True), Verdict(b, "keyword", "2", True)])
    assert store.missing_verdicts([a, b, c], "keyword", "1") == {b, c}
    assert store.missing_verdicts([a, b, c], "harmbench", "1") == {a, b, c}


def _asr_fixture(store: Store) -> dict[tuple[str, int], str]:
    store.save_model(MODEL)
    store.save_prompt_set("mini", PROMPTS)
    generations = [completion(p, k) for p in PROMPTS for k in (4, 8)]
    extra = completion(PROMPTS[0], 8, OTHER_PARAMS)
    store.save_generations([*generations, extra])
    key = {(c.prompt_id, c.layers): c.key for c in generations}
    keyword = {
        ("h1", 8): (True, False),
        ("h2", 8): (True, False),
        ("h3", 8): (False, False),
        ("b1", 8): (True, False),  # benign: must not be counted
        ("h1", 4): (None, False),
        ("h2", 4): (False, True),
        ("h3", 4): (True, True),
        ("b1", 4): (False, False),
    }
    store.save_verdicts(
        [
            Verdict(key[cell], "keyword", "1", jb, degenerate=degenerate)
            for cell, (jb, degenerate) in keyword.items()
        ]
        + [Verdict(key[("h1", 8)], "harmbench", "2", True), Verdict(key[("h2", 8)], "harmbench", "2", False)]
        + [Verdict(extra.key, "keyword", "1", True)]
    )
    return key


ASR_COLUMNS = [
    "params_hash",
    "judge",
    "version",
    "layers",
    "depth_percent",
    "n_judged",
    "n_jailbroken",
    "n_refused",
    "n_undecided",
    "n_degenerate",
]


def _asr_rows(frame: pd.DataFrame) -> set[tuple]:
    return {tuple(row) for row in frame[ASR_COLUMNS].itertuples(index=False)}


def test_asr_table_counts_match_a_hand_computed_example(store: Store) -> None:
    _asr_fixture(store)
    p, q = PARAMS.key(), OTHER_PARAMS.key()

    table = store.asr_table()

    assert set(table["model_id"]) == {"tiny"} and set(table["n_layers"]) == {8}
    assert _asr_rows(table) == {
        (p, "harmbench", "2", 8, 100.0, 2, 1, 1, 0, 0),
        (p, "keyword", "1", 4, 50.0, 3, 1, 1, 1, 2),
        (p, "keyword", "1", 8, 100.0, 3, 2, 1, 0, 0),
        (q, "keyword", "1", 8, 100.0, 1, 1, 0, 0, 0),
    }
    assert _asr_rows(store.asr_table("keyword", "1", params_hash=p)) == {
        (p, "keyword", "1", 4, 50.0, 3, 1, 1, 1, 2),
        (p, "keyword", "1", 8, 100.0, 3, 2, 1, 0, 0),
    }
    assert store.asr_table("keyword", "9").empty


def test_asr_table_restricted_to_a_prompt_set(store: Store) -> None:
    _asr_fixture(store)
    subset = store.save_prompt_set("just h3", [PROMPTS[2]]).set_id
    assert _asr_rows(store.asr_table("keyword", params_hash=PARAMS.key(), set_id=subset)) == {
        (PARAMS.key(), "keyword", "1", 4, 50.0, 1, 1, 0, 0, 1),
        (PARAMS.key(), "keyword", "1", 8, 100.0, 1, 0, 1, 0, 0),
    }


def test_label_is_found_by_text_when_a_generation_was_keyed_differently(store: Store) -> None:
    store.save_prompt_set("mini", PROMPTS)
    generated = completion(PROMPTS[0], 8)
    store.save_generations([generated], prompt_keys=["key-made-elsewhere"])
    store.save_verdicts([Verdict(generated.key, "keyword", "1", True)])
    assert store.asr_table()[["n_judged", "n_jailbroken"]].values.tolist() == [[1, 1]]


def test_judge_pairs_align_verdicts_per_completion(store: Store) -> None:
    key = _asr_fixture(store)
    store.save_verdicts([Verdict(key[("h1", 8)], "harmbench", "3", False)])  # newer harmbench version

    newest = store.judge_pairs("keyword", "harmbench")
    pinned = store.judge_pairs("keyword", "harmbench", version_b="2")

    assert newest[["completion_key", "jailbroken_a", "jailbroken_b", "version_b"]].values.tolist() == sorted(
        [[key[("h1", 8)], True, False, "3"], [key[("h2", 8)], True, False, "2"]]
    )
    assert sorted(pinned[["completion_key", "jailbroken_b"]].values.tolist()) == sorted(
        [[key[("h1", 8)], True], [key[("h2", 8)], False]]
    )
    assert set(newest["label"]) == {"harmful"}


# ----------------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(store: Store, tmp_path: Path, fmt: str) -> None:
    store.save_model(MODEL)
    store.save_prompt_set("mini", PROMPTS[:2])
    first, second = completion(PROMPTS[0], 8), completion(PROMPTS[1], 4)
    store.save_generations([first, second], params=PARAMS)
    store.save_verdicts([Verdict(first.key, "keyword", "1", True, raw="Sure, here")])

    written = store.export(tmp_path / "out" / f"results.{fmt}")

    assert written == tmp_path / "out" / f"results.{fmt}"
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # no temporary file left behind
    back = pd.read_csv(written) if fmt == "csv" else pd.read_parquet(written)
    back = back.set_index("completion_key")
    assert len(back) == 2
    assert back.loc[first.key, "text"] == "h1@8" and back.loc[second.key, "text"] == "h2@4"
    assert back.loc[first.key, "label"] == "harmful" and back.loc[first.key, "model_id"] == "tiny"
    assert bool(back.loc[first.key, "jailbroken"]) is True and pd.isna(back.loc[second.key, "jailbroken"])
    assert back.loc[first.key, "raw"] == "Sure, here"
    tokens = back.loc[first.key, "token_ids"]
    assert (json.loads(tokens) if fmt == "csv" else [int(t) for t in tokens]) == [8, 7, 9]  # JSON in CSV


def test_export_refuses_unknown_format(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="choose csv or parquet"):
        store.export(tmp_path / "results.xlsx")


# ----------------------------------------------------------------------------------- threads
def test_one_store_shared_by_writer_and_reader_threads(store: Store) -> None:
    errors: list[Exception] = []
    new_rows: list[int] = []
    rows_lock = threading.Lock()

    def write(thread: int) -> None:
        try:
            previous: list[Completion] = []
            for batch in range(6):
                fresh = [
                    Completion("m1", f"t{thread}-{batch}-{i}", f"t{thread} b{batch} p{i}", 4, "p", "x", (i,))
                    for i in range(5)
                ]
                n = store.save_generations(fresh + previous)  # resend the last batch: nothing new from it
                with rows_lock:
                    new_rows.append(n)
                previous = fresh
        except Exception as error:  # reported to the main thread below
            errors.append(error)

    def read() -> None:
        try:
            for _ in range(10):
                store.get_generations(layers=4)
                store.asr_table()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)] + [
        threading.Thread(target=read) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)  # an upper bound for a loaded machine; checked below

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert new_rows == [5] * 24
    assert store.table_counts()["generations"] == 4 * 6 * 5
