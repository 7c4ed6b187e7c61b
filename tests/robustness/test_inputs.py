"""Bad input at every entry point gets a clear message; faults and threads lose nothing."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from conftest import child_env
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.generation
from engine.depths import DepthError, check_layers, layers_from_percent, parse_depths, parse_layers
from engine.generation import generate
from engine.models import from_objects, load_model
from engine.tiny import build_tiny_model
from engine.types import GenerationParams

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- depth parser


@given(text=st.text(max_size=40), n_layers=st.integers(min_value=1, max_value=128))
@settings(max_examples=300, deadline=None)
def test_depth_parser_accepts_or_says_why(text, n_layers):
    """Any text either parses to valid layer counts or raises DepthError — never anything else."""
    for parse in (parse_depths, parse_layers):
        try:
            layers = parse(text, n_layers)
        except DepthError as exc:
            assert str(exc)
        else:
            assert layers and all(1 <= k <= n_layers for k in layers)
            assert len(set(layers)) == len(layers)


@given(percent=st.floats(min_value=1e-6, max_value=100), n_layers=st.integers(min_value=1, max_value=256))
@settings(max_examples=300, deadline=None)
def test_percent_maps_by_the_documented_rule(percent, n_layers):
    assert layers_from_percent(percent, n_layers) == min(max(round(percent / 100 * n_layers), 1), n_layers)


@pytest.mark.parametrize("bad", [0, -5, 101, 100.0001, float("nan"), float("inf"), -math.inf])
def test_out_of_range_percentages_are_refused(bad):
    with pytest.raises(DepthError, match="out of range|not a number"):
        layers_from_percent(bad, 32)


@pytest.mark.parametrize("text", ["", " ", ",", "50,,84", "abc", "50;84", "1e400", "0", "101", "-3", "nan"])
def test_bad_depth_lists_name_the_problem(text):
    with pytest.raises(DepthError) as info:
        parse_depths(text, 32)
    assert "give" in str(info.value) or "write" in str(info.value) or "remove" in str(info.value)


def test_seed_study_depths_on_32_layers():
    assert parse_depths("50,69,78,84,88,94,100", 32) == [16, 22, 25, 27, 28, 30, 32]
    with pytest.raises(DepthError, match="1..32"):
        check_layers(33, 32)
    with pytest.raises(DepthError, match="whole number"):
        check_layers(True, 32)


# ---------------------------------------------------------------- prompts and models


def test_huge_and_control_character_prompts_generate(tiny_tokenizer):
    loaded = from_objects(build_tiny_model("llama", n_layers=2), tiny_tokenizer)
    prompts = ["\x00\x07 hello \u202e\ufeff", "word " * 2000]
    completions = generate(loaded, prompts, [2, 1], GenerationParams(max_new_tokens=2))
    assert [(c.prompt_text, c.layers) for c in completions] == [(p, k) for p in prompts for k in (2, 1)]


def test_trust_remote_code_is_off_by_default(tiny_model_dir, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_model_dir))
    assert seen == [False]


def test_no_secrets_in_logs(tiny_model_dir):
    env = child_env(HF_TOKEN="hf_secret_abc123")
    result = subprocess.run(
        [sys.executable, "-m", "engine", "-v", "generate", "--model", str(tiny_model_dir), "--layers", "2",
         "--prompt", "Hi", "--max-new-tokens", "2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "hf_secret_abc123" not in result.stdout + result.stderr


def test_server_binds_to_localhost_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("127.0.0.1", "localhost")
    assert config["server"]["fileWatcherType"] == "none" and config["server"]["headless"] is True


# ---------------------------------------------------------------- faults


def test_out_of_memory_halves_the_batch_and_loses_nothing(tiny_tokenizer, monkeypatch):
    loaded = from_objects(build_tiny_model("llama", n_layers=3), tiny_tokenizer)
    prompts = [f"prompt number {i}" for i in range(6)]
    params = GenerationParams(max_new_tokens=3)
    expected = generate(loaded, prompts, [3, 1], params, rows_per_batch=12)
    real, sizes = engine.generation.decode_rows, []

    def tight_memory(loaded_, prompt_ids, *args, **kwargs):
        sizes.append(len(prompt_ids))
        if len(prompt_ids) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(loaded_, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(engine.generation, "decode_rows", tight_memory)
    got = generate(loaded, prompts, [3, 1], params, rows_per_batch=12)
    assert sizes[:3] == [6, 3, 1]  # halved (floor) until it fits
    assert [(c.prompt_text, c.layers, c.token_ids) for c in got] == [
        (c.prompt_text, c.layers, c.token_ids) for c in expected
    ]


def test_other_runtime_errors_are_not_swallowed(tiny_tokenizer, monkeypatch):
    loaded = from_objects(build_tiny_model("llama", n_layers=2), tiny_tokenizer)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(engine.generation, "decode_rows", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        generate(loaded, ["Hi"], [2], GenerationParams(max_new_tokens=2))


# ---------------------------------------------------------------- concurrency


def test_threads_sharing_one_model_get_their_own_depths(tiny_tokenizer):
    """Truncation state never leaks between requests: each thread's result equals a sequential run."""
    loaded = from_objects(build_tiny_model("llama", n_layers=6), tiny_tokenizer)
    params = GenerationParams(max_new_tokens=4)
    jobs = [
        (["How do I bake bread?", "Hello"], [6]),
        (["Write a poem"], [1, 3]),
        (["Hello"], [2]),
        (["Hi"], [6, 5]),
    ]
    expected = [[c.token_ids for c in generate(loaded, p, ks, params)] for p, ks in jobs]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(3):
                got = [c.token_ids for c in generate(loaded, *jobs[index], params)]
                assert got == expected[index]
            results[index] = got
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=480)  # an upper bound for a loaded machine; checked below
    assert not any(thread.is_alive() for thread in threads)
    assert not errors and len(results) == len(jobs)
    assert len(loaded.layers) == 6 and loaded.model.config.num_hidden_layers == 6
