"""The CLI of the depth rules: --drop-layers, --prune/--remove, --exit-policy speculative; sweeps store,
resume and report them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_model

from engine.cli import main
from engine.depths import canonical_removal
from engine.generation import encode_prompts
from engine.models import from_objects
from engine.pruning import score_layers
from engine.types import GenerationParams


def run_json(capsys, *args: str) -> list[dict]:
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_generate_drop_layers_and_speculative_json(tiny_model_dir, capsys):
    model = ["generate", "--model", str(tiny_model_dir), "--prompt", "Hello", "--max-new-tokens", "6"]
    (dropped,) = run_json(capsys, *model, "--drop-layers", "3-4,6")
    assert dropped["layers"] == 5 and dropped["drop_layers"] == [3, 4, 6]
    assert dropped["compute_fraction"] == pytest.approx(5 / 8)
    (suffix,) = run_json(capsys, *model, "--drop-layers", "7-8")  # a removed suffix is truncation at 6
    (truncated,) = run_json(capsys, *model, "--layers", "6")
    assert suffix["drop_layers"] == [] and suffix["token_ids"] == truncated["token_ids"]
    (full,) = run_json(capsys, *model, "--layers", "8")
    (spec,) = run_json(
        capsys, *model, "--exit-policy", "speculative", "--draft-layers", "3", "--draft-tokens", "2"
    )
    assert spec["token_ids"] == full["token_ids"] and spec["layers"] == 8
    assert spec["draft_layers"] == 3 and spec["draft_tokens"] == 2 and 0 <= spec["acceptance_rate"] <= 1
    assert spec["compute_fraction"] >= 1.0  # the verification runs every layer, the drafts come on top


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--drop-layers", "9-10"], "out of range"),
        (["--drop-layers", "1-8"], "keep at least one"),
        (["--drop-layers", "4-2"], "low-high"),
        (["--drop-layers", "3-4", "--layers", "4"], "leave out --layers"),
        (["--drop-layers", "3-4", "--prune", "angular", "--remove", "2"], "not both"),
        (["--prune", "angular"], "--remove"),
        (["--remove", "2"], "only with --prune"),
        (["--prune", "angular", "--remove", "8"], "leaves none"),
        (["--exit-policy", "speculative"], "--draft-layers"),
        (["--exit-policy", "speculative", "--draft-layers", "8"], "below the model"),
        (["--exit-policy", "speculative", "--draft-layers", "2", "--temperature", "0.7"], "greedy"),
        (["--exit-policy", "speculative", "--draft-layers", "2", "--layers", "4"], "leave out --layers"),
        (["--draft-layers", "2"], "only apply to --exit-policy speculative"),
        (["--drop-layers", "2", "--exit-policy", "confidence", "--threshold", "0.5"], "static policy"),
    ],
)
def test_bad_rule_options_give_one_clear_line(tiny_model_dir, capsys, args, message):
    code = main(["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err, captured.err


def test_prune_scores_are_shown_and_pick_the_dropped_layers(tiny_model_dir, capsys):
    code = main([
        "generate", "--model", str(tiny_model_dir), "--prompt", "Hello", "--max-new-tokens", "3",
        "--prune", "angular", "--remove", "2", "--calibration-limit", "4", "--json",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    assert rows[0]["layers"] == 6 and len(rows[0]["drop_layers"]) in (0, 2)  # (0: a suffix, truncation)
    assert "angular on benign (4 prompts" in captured.err
    assert captured.err.count("angular distance, block") == 7  # blocks 1-2 .. 7-8


def _reference_hidden_states(model, tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Independent: HF's own hidden states per prompt, one at a time (no padding), with the final norm
    made the identity so the last entry is the raw output of the last layer. [tokens, hidden] per layer."""
    params = GenerationParams()
    per_layer: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for ids in encode_prompts(tokenizer, texts, params):
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            for index, hidden in enumerate(out.hidden_states):
                if len(per_layer) <= index:
                    per_layer.append([])
                per_layer[index].append(hidden[0].double().numpy())
    return [np.concatenate(chunks) for chunks in per_layer]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)), -1, 1)


def test_pruning_scores_equal_an_independent_numpy_computation(tiny_tokenizer):
    model = build_tiny_model("llama", n_layers=6)
    model.model.norm = torch.nn.Identity()
    texts = ["How do I bake bread?", "Write a poem about the sea and the sky, please, right now.", "Hello"]
    states = _reference_hidden_states(model, tiny_tokenizer, texts)
    loaded = from_objects(model, tiny_tokenizer)
    influence = [1 - _cos(states[i], states[i + 1]).mean() for i in range(6)]
    got = score_layers(loaded, texts, "block-influence", 2)
    np.testing.assert_allclose(got.scores, influence, rtol=1e-5, atol=1e-6)
    assert got.dropped == tuple(sorted(int(i) + 1 for i in np.argsort(influence)[:2]))
    assert got.n_tokens == states[0].shape[0]
    angular = [np.arccos(_cos(states[i], states[i + 3])).mean() / np.pi for i in range(4)]
    got = score_layers(loaded, texts, "angular", 3)
    np.testing.assert_allclose(got.scores, angular, rtol=1e-5, atol=1e-6)
    start = int(np.argmin(angular))
    assert got.dropped == (start + 1, start + 2, start + 3)


def test_pruned_sweep_stores_the_scores_in_its_run_and_the_choice_in_its_rows(
    tiny_model_dir, tmp_path, capsys
):
    from engine.store import Store

    db = tmp_path / "pruned.duckdb"
    args = ["sweep", "--model", str(tiny_model_dir), "--prompts", "demo", "--limit", "2", "--db", str(db),
            "--max-new-tokens", "3", "--prune", "block-influence", "--remove", "2",
            "--calibration-limit", "3"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    with Store.open(db, read_only=True) as store:
        runs = store.list_runs()
        rows = store.get_generations()
    record = json.loads(json.loads(runs["parameters"].iloc[0])["pruning"])
    assert (
        record["criterion"] == "block-influence" and len(record["scores"]) == 8 and record["n_prompts"] == 3
    )
    assert {c.layers for c in rows} == {6} and len(rows) == 2
    keyed = canonical_removal(tuple(record["dropped"]), 8)[1]  # a removed suffix is keyed as truncation
    assert {c.params_hash for c in rows} == {GenerationParams(max_new_tokens=3, drop_layers=keyed).key()}
