"""Inputs that were silently wrong or ended in a traceback.

One test (at least) per class: depth lists, sampling parameters, prompts longer than the context, CSV
encodings, damaged model files and unwritable folders. Property tests drive ``engine.cli.main`` with
generated arguments: every run ends in a clean exit 2 naming the option, or reaches the model loader;
invalid input never reaches it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import shutil
from pathlib import Path

import duckdb
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.models
from engine.cli import main
from engine.datasets import DatasetError
from engine.datasets.csvfiles import parse_csv
from engine.depths import DepthError, parse_percentages
from engine.generation import decode_rows, encode_prompt, fit_prompt, generate
from engine.lenses.heads import RAW_HEAD
from engine.modelfiles import smollm_gguf_file
from engine.models import ModelLoadError, from_objects
from engine.store import Store
from engine.store.schema import MIGRATIONS
from engine.tiny import build_tiny_model
from engine.types import MIN_TEMPERATURE, Completion, GenerationParams, ParamsError

CONTEXT = 512  # the tiny Llama's max_position_embeddings (engine/tiny.py)


@contextlib.contextmanager
def loader_spy(monkeypatch_context):
    """Record whether a command reached the model loader (which then stops it with a user error)."""
    calls: list[str] = []

    def spy(source=None, **_kwargs):
        calls.append(str(source))
        raise ModelLoadError("SPY: the command reached the model loader")

    monkeypatch_context.setattr(engine.models, "load_model", spy)
    yield calls


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- 8. one depth parser, errors name the option


@pytest.mark.parametrize(
    ("argument", "fragment"),
    [
        ("--depths=50,,60", "--depths: empty entry"),
        ("--depths=", "--depths: no depths given"),
        ("--depths=abc", "--depths: 'abc' in depths list is not a number"),
        ("--depths=0,50", "--depths: depth 0 % is out of range"),
        ("--depths=nan", "--depths: depth nan is not a number"),
        ("--layers=0", "--layers: layers 0 is out of range"),
        ("--layers=4,,8", "--layers: empty entry"),
        ("--layers=99", "--layers: layers 99 is out of range: this model has 8 layers"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "sweep"])
def test_bad_depths_are_refused_by_every_command_before_a_model_loads(
    command, argument, fragment, tiny_model_dir, tmp_path, monkeypatch
):
    extra = ["--prompt", "Hi"] if command == "generate" else ["--db", str(tmp_path / "x.duckdb")]
    with loader_spy(monkeypatch) as calls:
        code, _, err = run_cli([command, "--model", str(tiny_model_dir), argument, *extra])
    assert (code, calls) == (2, [])
    assert err.startswith(f"error: {fragment}"), err
    assert "Traceback" not in err and not (tmp_path / "x.duckdb").exists()


def test_percentages_parse_once_for_every_command_and_page():
    assert parse_percentages("50, 84 %,100,84") == (50.0, 84.0, 100.0)
    page = (Path(__file__).resolve().parents[2] / "pages" / "sweep.py").read_text()
    assert "def parse_percentages" not in page and "parse_percentages(depth_text)" in page
    with pytest.raises(DepthError):
        parse_percentages("50,,60")


# ---------------------------------------------------------------- property tests over every command


def _depth_text_is_valid(text: str) -> bool:
    parts = [p.strip().rstrip("%").strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return False
    return all(0 < v <= 100 for v in values)  # NaN compares False


def _sampling_is_valid(temperature: float, top_p: float, max_new_tokens: int) -> bool:
    usable_temperature = temperature == 0 or (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE)
    return usable_temperature and 0 < top_p <= 1 and 1 <= max_new_tokens < CONTEXT


depth_texts = st.one_of(
    st.text(alphabet="0123456789.,% -eEnaif", max_size=14),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=4).map(
        lambda xs: ",".join(repr(x) for x in xs)
    ),
)
temperatures = st.one_of(st.floats(), st.sampled_from([0.0, 0.7, 1e-9, -0.0, MIN_TEMPERATURE]))
top_ps = st.one_of(st.floats(), st.sampled_from([1.0, 0.9, 0.0, 1.0000001]))
new_tokens = st.integers(min_value=-5, max_value=2 * CONTEXT)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["generate", "sweep"]),
    depths=depth_texts,
    temperature=temperatures,
    top_p=top_ps,
    max_new_tokens=new_tokens,
)
def test_cli_depth_and_sampling_arguments_never_traceback(
    command, depths, temperature, top_p, max_new_tokens, tiny_model_dir, tmp_path
):
    db = tmp_path / "prop.duckdb"
    extra = ["--prompt", "Hi"] if command == "generate" else ["--db", str(db), "--limit", "1"]
    argv = [
        command, "--model", str(tiny_model_dir), f"--depths={depths}", f"--temperature={temperature!r}",
        f"--top-p={top_p!r}", f"--max-new-tokens={max_new_tokens}", *extra,
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch, loader_spy(patch) as calls:
        code, _, err = run_cli(argv)
    assert code == 2 and "Traceback" not in err and err.startswith("error: ")
    valid = _depth_text_is_valid(depths) and _sampling_is_valid(temperature, top_p, max_new_tokens)
    if valid:
        assert calls == [str(tiny_model_dir)] and "SPY" in err
    else:
        assert calls == []
        assert err.split(":")[1].strip() in ("--depths", "--temperature", "--top-p", "--max-new-tokens")
    db.unlink(missing_ok=True)


@settings(max_examples=200, deadline=None)
@given(temperature=temperatures, top_p=top_ps, max_new_tokens=new_tokens)
def test_generation_params_accept_exactly_the_usable_values(temperature, top_p, max_new_tokens):
    try:
        GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    except ParamsError as exc:
        assert exc.field in ("max_new_tokens", "temperature", "top_p") and str(exc)
        valid = False
    else:
        valid = True
    assert valid == _sampling_is_valid(temperature, top_p, max_new_tokens if max_new_tokens < 1 else 1)


# ---------------------------------------------------------------- 9. sampling parameters and output buffers


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 1e-30}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
    ],
)
def test_nonsensical_sampling_parameters_are_refused(kwargs, field):
    with pytest.raises(ParamsError) as info:
        GenerationParams(**kwargs)
    assert info.value.field == field


def test_more_new_tokens_than_the_context_is_refused_before_loading(tiny_model_dir, monkeypatch):
    with loader_spy(monkeypatch) as calls:
        code, _, err = run_cli(
            ["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--max-new-tokens", str(CONTEXT)]
        )
    assert (code, calls) == (2, [])
    assert err.startswith("error: --max-new-tokens: 512 new tokens do not fit this model's context of 512")


def test_output_buffers_grow_with_the_answer_not_with_max_new_tokens(tiny_tokenizer):
    """A trillion-token limit would allocate terabytes up front; rows that stop at once need one step."""
    loaded = from_objects(build_tiny_model("llama", n_layers=2), tiny_tokenizer)
    loaded = dataclasses.replace(loaded, eos_token_ids=tuple(range(loaded.model.config.vocab_size)))
    ids = encode_prompt(tiny_tokenizer, "Hello there", GenerationParams())
    rows = decode_rows(
        loaded, [ids, ids[:3]], [2, 1], GenerationParams(max_new_tokens=10**12), None, RAW_HEAD
    )
    assert [len(r.token_ids) for r in rows] == [1, 1, 1, 1]


# ---------------------------------------------------------------- 10 + 13.6. prompts longer than the context


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_long_prompts_are_cut_from_the_left_and_never_run_past_the_context(arch, tiny_tokenizer):
    model = build_tiny_model(arch, n_layers=2)
    context = model.config.max_position_embeddings
    loaded = from_objects(model, tiny_tokenizer)
    params = GenerationParams(max_new_tokens=8)
    seen: list[int] = []

    def record_positions(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        seen.append(int(mask.shape[1]) if mask is not None else int(ids.shape[1]))

    hook = loaded.model.register_forward_pre_hook(record_positions, with_kwargs=True)
    long_text = "please tell me a story " * 400 + "THE END"
    try:
        long, short = generate(loaded, [long_text, "Hi"], [2], params)
    finally:
        hook.remove()
    full = len(encode_prompt(tiny_tokenizer, long_text, params))
    assert full > context  # the old code ran this prompt at positions up to `full`
    assert max(seen) <= context  # prompt + every generated token fit the positions the model has
    assert long.prompt_truncated_tokens >= full - (context - params.max_new_tokens) > 0
    assert short.prompt_truncated_tokens == 0
    # The cut takes the oldest words of the user's text; the chat template's head and tail stay.
    budget = context - params.max_new_tokens
    kept, cut = fit_prompt(tiny_tokenizer, long_text, params, budget)
    full_ids = encode_prompt(tiny_tokenizer, long_text, params)
    head = encode_prompt(tiny_tokenizer, "", params)[:2]
    assert len(kept) <= budget and cut == len(full_ids) - len(kept) == long.prompt_truncated_tokens
    assert kept[:2] == full_ids[:2] == head and kept[-12:] == full_ids[-12:]
    # Deterministic: same prompt, model and params give the same cut and the same answer (cache keys hold).
    again = generate(loaded, [long_text], [2], params)[0]
    assert (again.token_ids, again.prompt_truncated_tokens) == (long.token_ids, long.prompt_truncated_tokens)


def test_cut_prompts_are_visible_in_the_cli_and_stored(tiny_model_dir, tmp_path):
    long_text = "tell me more " * 400
    code, out, err = run_cli(
        ["generate", "--model", str(tiny_model_dir), "--layers", "2", "--max-new-tokens", "4", "--json",
         "--prompt", long_text, "--prompt", "Hi"]
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["prompt_truncated_tokens"] > 0 and rows[1]["prompt_truncated_tokens"] == 0
    assert (
        "warning: prompt 'tell me more" in err and f"first {rows[0]['prompt_truncated_tokens']} tokens" in err
    )
    cut = Completion("m", "p", long_text, 2, GenerationParams().key(), "x", (1,), 0.1, 17)
    with Store.open(tmp_path / "s.duckdb") as store:
        store.save_generations([cut])
        assert store.get_completion(cut.key).prompt_truncated_tokens == 17
        assert store.truncated_prompt_counts() == (1, 1)
        assert store.results_frame()["prompt_truncated_tokens"].tolist() == [17]


def test_a_v2_database_gains_the_truncation_column(tmp_path):
    path = tmp_path / "v2.duckdb"
    with duckdb.connect(str(path)) as con:
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                con.execute(statement)
            con.execute(
                "INSERT INTO schema_version VALUES (?, ?, now()::TIMESTAMP)", [migration.version, "x"]
            )
        con.execute(
            "INSERT INTO generations VALUES ('k', 'm', 'pk', 'p', 'old prompt', 2, 'h', NULL, 'old', [1], "
            "0.5, now()::TIMESTAMP, NULL)"
        )
    with Store.open(path) as store:
        assert store.get_completion("k").prompt_truncated_tokens == 0
        assert store.truncated_prompt_counts() == (0, 1)


# ---------------------------------------------------------------- 11. CSV encodings

CSV_TEXT = "prompt,label\nCafé crème — 日本,harmful\nhello,benign\n"


@pytest.mark.parametrize(
    "raw",
    [
        CSV_TEXT.encode("utf-8"),
        CSV_TEXT.encode("utf-8-sig"),
        CSV_TEXT.encode("utf-16"),  # with its BOM, in the machine's byte order
        b"\xff\xfe" + CSV_TEXT.encode("utf-16-le"),
        b"\xfe\xff" + CSV_TEXT.encode("utf-16-be"),
    ],
)
def test_utf8_and_utf16_with_a_bom_read_the_same(raw):
    assert [p.text for p in parse_csv(raw)] == ["Café crème — 日本", "hello"]


@pytest.mark.parametrize(
    ("raw", "line", "fragment"),
    [
        ("prompt\nok\ncafé\n".encode("latin-1"), 3, "not valid UTF-8 text: bytes e9 on line 3"),
        ("prompt\nok\n".encode("cp1252") + b"\x93quoted\x94\n", 3, "bytes 93 on line 3"),
        (CSV_TEXT.encode("utf-16-le"), 1, "looks like UTF-16 without a byte-order mark"),
        (b"\xff\xfe" + "prompt\nok\n".encode("utf-16-le") + b"\x00\xd8", 3, "not valid UTF-16"),
    ],
)
def test_text_that_does_not_decode_is_refused_with_line_and_reason(raw, line, fragment):
    with pytest.raises(DatasetError) as info:
        parse_csv(raw, filename="bad.csv")
    assert info.value.line == line and fragment in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        "Behavior,BehaviorID,FunctionalCategory\nPlain ask,b0,standard\nSummarise it,b1,contextual\n",
        'Behavior,BehaviorID,Tags\nPlain ask,b0,\nSummarise it,b1,"context, hash_check"\n',
        "Behavior,BehaviorID,FunctionalCategory,ContextString\nPlain ask,b0,standard,\n"
        "Summarise it,b1,contextual,\n",
    ],
)
def test_contextual_harmbench_rows_without_their_context_are_refused(data):
    with pytest.raises(DatasetError, match="tagged contextual but its ContextString") as info:
        parse_csv(data, filename="hb.csv")
    assert info.value.row == 3


# ---------------------------------------------------------------- 12. damaged model files, unwritable folders


def _damaged_models(root: Path, tiny_model_dir: Path) -> dict[str, tuple[Path, str]]:
    gguf = smollm_gguf_file()
    models: dict[str, tuple[Path, str]] = {}
    if gguf is not None and gguf.exists():
        truncated = root / "cut.gguf"
        with gguf.open("rb") as source:
            truncated.write_bytes(source.read(3_000_000))
        models["truncated gguf"] = (truncated, "is damaged or truncated")
    not_gguf = root / "notes.gguf"
    not_gguf.write_text("hello")
    models["not a gguf"] = (not_gguf, "is not a GGUF file")
    config_only = root / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_model_dir / "config.json", config_only)
    models["config only"] = (config_only, "has a config.json but no weight files")
    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, no_tokenizer)
    models["no tokenizer"] = (no_tokenizer, "no tokenizer files")
    cut_weights = root / "cut-weights"
    shutil.copytree(tiny_model_dir, cut_weights)
    weights = cut_weights / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    models["truncated safetensors"] = (cut_weights, "is truncated")
    return models


def test_damaged_model_files_give_one_clear_message_each(tiny_model_dir, tmp_path):
    for what, (path, fragment) in _damaged_models(tmp_path, tiny_model_dir).items():
        code, _, err = run_cli(["generate", "--model", str(path), "--layers", "1", "--prompt", "Hi"])
        assert code == 2, what
        assert err.startswith("error: ") and fragment in err, (what, err)
        assert "Traceback" not in err and "sentencepiece" not in err, what
        assert len(err.strip().splitlines()) == 1, (what, err)


def test_unwritable_export_and_database_folders_give_a_message(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = tmp_path / "ok.duckdb"
    Store.open(db).close()
    code, _, err = run_cli(["export", "--db", str(db), "--out", str(blocker / "sub" / "x.csv")])
    assert code == 2 and err.startswith("error: cannot ") and "a file is in the way" in err, err
    code, _, err = run_cli(["sweep", "--db", str(blocker / "x.duckdb"), "--layers", "1", "--limit", "1"])
    assert code == 2 and "a file is in the way" in err and "Traceback" not in err, err


def test_generation_refuses_a_limit_beyond_the_context_for_in_memory_models(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("llama", n_layers=2), tiny_tokenizer)
    with pytest.raises(ParamsError, match="do not fit this model's context of 512"):
        generate(loaded, ["Hi"], [1], GenerationParams(max_new_tokens=600))
    assert torch.is_grad_enabled()  # nothing left switched off by the refusal
