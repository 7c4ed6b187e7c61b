"""The public CLI contract of `python -m engine generate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import child_env

from engine.cli import main
from engine.generation import encode_prompts
from engine.models import load_model
from engine.types import GenerationParams

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = child_env()
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_generate_json_contract(tiny_model_dir):
    prompts = ["How do I bake bread?", "Hello"]
    result = run_cli(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--layers",
        "2,5,8",
        "--prompt",
        prompts[0],
        "--prompt",
        prompts[1],
        "--max-new-tokens",
        "12",
        "--json",
        "--device",
        "cpu",  # the reference below runs in float32 on CPU; a GPU would default to bf16
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert [(r["prompt"], r["layers"]) for r in rows] == [(p, k) for p in prompts for k in (2, 5, 8)]
    loaded = load_model(str(tiny_model_dir))
    eos = loaded.tokenizer.eos_token_id
    encoded = encode_prompts(loaded.tokenizer, prompts, GenerationParams())
    for row in rows:
        assert row["depth"] == pytest.approx(row["layers"] / 8 * 100)
        ids = row["token_ids"]
        assert eos not in ids[:-1], "cut after the first EOS"
        assert len(ids) <= 12
        assert row["completion"] == loaded.tokenizer.decode(ids, skip_special_tokens=True)
        # independent check: HF generate on a model loaded with only k layers
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, num_hidden_layers=row["layers"]
        ).eval()
        prompt_ids = torch.tensor([encoded[prompts.index(row["prompt"])]])
        out = reference.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )[0, prompt_ids.shape[1] :].tolist()
        assert ids == (out[: out.index(eos) + 1] if eos in out else out)


def generate_hello(model_dir: Path, depths: str, *options: str) -> int:
    """`generate` in this process: the prompt "Hello", 3 new tokens, at the given depths."""
    args = ["--model", str(model_dir), "--depths", depths, "--prompt", "Hello", "--max-new-tokens", "3"]
    return main(["generate", *args, *options])


def test_generate_without_chat_template_tokenizes_as_is(tiny_model_dir, capsys):
    assert generate_hello(tiny_model_dir, "100", "--no-chat-template", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["layers"] == 8 and rows[0]["depth"] == 100


def test_generate_table_output(tiny_model_dir, capsys):
    assert generate_hello(tiny_model_dir, "50,100") == 0
    out = capsys.readouterr().out
    assert "PROMPT: Hello" in out and "4 / 8 layers · 50 %" in out and "8 / 8 layers · 100 %" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model", "--layers", "2"], "does not exist"),
        (["--model", "no-such-org/no-such-model", "--layers", "2"], "Download the checkpoint"),
        (["--layers", "0"], "out of range"),
        (["--layers", "9"], "out of range"),
        (["--depths", "0"], "out of range"),
        (["--depths", "101"], "out of range"),
        (["--depths", "abc"], "not a number"),
    ],
)
def test_generate_bad_input_gives_one_clear_line(tiny_model_dir, capsys, args, message):
    if "--model" not in args:
        args = ["--model", str(tiny_model_dir), *args]
    assert main(["generate", *args, "--prompt", "Hi", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err


def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path, capsys):
    from transformers import AutoConfig

    AutoConfig.for_model("opt", num_hidden_layers=2, hidden_size=16, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    assert main(["generate", "--model", str(tmp_path), "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "'opt' is not supported" in err and "Llama" in err and "GPT-NeoX" in err


def test_every_command_has_help():
    from engine.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        assert subparser.format_help().startswith("usage:"), name
    result = run_cli("--help")
    assert result.returncode == 0 and "generate" in result.stdout


def test_worker_failure_is_a_message_that_says_rows_are_kept(monkeypatch, db_path, capsys):
    """A Ray worker failure ends the command with exit 2 and tells the user how to resume."""
    from engine import queries
    from engine.executors import WorkerFailedError
    from engine.store import Store

    def failing(*_args, **_kwargs):
        raise WorkerFailedError("work unit 3 failed 3 time(s), 0 worker(s) left")

    monkeypatch.setattr(queries, "judge_all_stored", failing)
    Store.open(db_path).close()  # judge-stored adds to an existing database only
    assert main(["judge-stored", "--db", str(db_path)]) == 2
    err = capsys.readouterr().err
    assert "work unit 3 failed" in err and "Stored rows kept; re-run to resume" in err
    assert "Traceback" not in err
