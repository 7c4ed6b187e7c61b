"""One rule for prompts longer than the context: probes, the logit lens, the Ray activation path and
tuned-lens training cut them exactly as generation does (``engine.decoding.prompts.fit_prompts``), so no model
ever reads a position it was not built for and every path sees the prompt generation saw."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from engine.executors.local import chunk_activations
from engine.generation import encode_prompt, fit_prompt, generate, prompts_with_answers
from engine.lenses.logit import last_token_residuals, logit_lens_strip, residuals_for_ids
from engine.models import from_objects
from engine.probes import activations_path, collect_activations
from engine.tiny import build_tiny_model
from engine.types import GenerationParams, Prompt

LONG = "please tell me a story about the sea " * 300 + "THE END"
ENGINE = Path(__file__).resolve().parents[2] / "engine"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def loaded(request, tiny_tokenizer):
    return from_objects(build_tiny_model(request.param, n_layers=3), tiny_tokenizer)


def context_of(loaded) -> int:
    return loaded.model.config.max_position_embeddings


@pytest.fixture
def widest_input(loaded):
    """The longest sequence any forward pass of the model was given (positions used)."""
    seen = [0]

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        seen.append(int(mask.shape[1]) if mask is not None else int(ids.shape[1]))

    hook = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    yield seen
    hook.remove()


def fitted_ids(loaded, text: str, params: GenerationParams) -> list[int]:
    """The independent reference: ``fit_prompt`` with the context budget written out here."""
    ids, _ = fit_prompt(loaded.tokenizer, text, params, context_of(loaded) - params.max_new_tokens)
    return ids


@pytest.mark.parametrize("new_tokens", [8, 100])
def test_residuals_and_the_logit_lens_read_the_prompt_generation_reads(loaded, widest_input, new_tokens):
    params = GenerationParams(max_new_tokens=new_tokens)
    assert len(encode_prompt(loaded.tokenizer, LONG, params)) > context_of(loaded)  # really too long
    residuals = last_token_residuals(loaded, [LONG, "Hi"], params)
    assert max(widest_input) <= context_of(loaded) - new_tokens
    expected = residuals_for_ids(loaded, [fitted_ids(loaded, LONG, params)])[0]  # one row, no padding
    torch.testing.assert_close(residuals[0], expected, atol=1e-4, rtol=1e-4)
    # The lens's full-depth top-1 is exactly the first token generation picks for the same prompt.
    strip = logit_lens_strip(loaded, LONG, params)
    [first] = generate(loaded, [LONG], [loaded.n_layers], params)
    assert first.prompt_truncated_tokens > 0
    assert strip[-1].token_id == first.token_ids[0]
    assert max(widest_input) <= context_of(loaded)


def test_probe_activations_and_the_ray_chunk_path_cut_alike(loaded, widest_input):
    params = GenerationParams()
    prompts = [Prompt("long", LONG, "harmful"), Prompt("short", "Bake bread", "benign")]
    here = collect_activations(loaded, prompts, params, cache_dir=None).residuals
    on_actor = chunk_activations(loaded, prompts, params).residuals  # what each Ray actor runs
    assert max(widest_input) <= context_of(loaded) - params.max_new_tokens
    expected = residuals_for_ids(loaded, [fitted_ids(loaded, LONG, params)])[0].numpy()
    assert abs(here[0] - expected).max() < 1e-4 and abs(on_actor - here).max() < 1e-4


def test_tuned_lens_training_text_is_the_fitted_prompt_and_its_answer(loaded, widest_input):
    generate_tokens = 6
    [sequence] = prompts_with_answers(loaded, [LONG], generate_tokens)
    params = GenerationParams(max_new_tokens=generate_tokens)
    prompt_ids = fitted_ids(loaded, LONG, params)
    [answer] = generate(loaded, [LONG], [loaded.n_layers], params)
    assert sequence == prompt_ids + list(answer.token_ids)  # the answer follows the prompt it answered
    assert len(sequence) <= context_of(loaded)


def test_activation_files_of_other_budgets_are_kept_apart():
    default = activations_path("m", "s", GenerationParams(), "/c")
    assert default.name == "m-s-chat-v1.npz"  # the default budget keeps the names files had
    other = activations_path("m", "s", GenerationParams(max_new_tokens=300), "/c")
    assert other != default and "-new300" in other.name


def test_only_the_fitting_rule_encodes_prompts_for_a_model():
    """Every engine module that feeds prompt tokens to a model gets them from ``fit_prompts``: the bare
    encoders are used only by the rule itself (``decoding/prompts``, re-exported by ``generation``) and by
    the demo model's training-data encoder (its own short prompts, tokenizer training, no model yet)."""
    users = set()
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name in {"encode_prompt", "encode_prompts"}:
                    users.add(path.relative_to(ENGINE).as_posix())
    assert users <= {"decoding/prompts.py", "generation.py", "demo_model/tokenizer.py"}, users
