"""How a dynamic-exit step runs a layer never changes what it decodes: the whole batch through the layer,
the batch split into climbing rows (the full layer) and exited rows (keys and values only, from the
architecture's function or from the layer run up to its cache write) give the same tokens and exit
layers, on every tiny architecture."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model

import engine.decoding.loop as loop
from engine.generation import generate
from engine.models import from_objects
from engine.types import GenerationParams

PROMPTS = ["How do I bake bread?", "Write a poem about the sea and the sky, please, right now.", "Hello"]
CASES = [("confidence", [0.05, 0.3, 0.9]), ("saturation", [0.5, 0.8, 0.95])]


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def loaded(request, tiny_tokenizer):
    return from_objects(build_tiny_model(request.param, n_layers=N_LAYERS), tiny_tokenizer)


def _decoded(loaded, policy: str, thresholds: list[float]):
    params = GenerationParams(max_new_tokens=8, exit_policy=policy, threshold=thresholds[0], min_layers=2)
    done = generate(loaded, PROMPTS, [], params, thresholds=thresholds)
    return [(c.token_ids, c.exit_layers) for c in done]


def _spy(monkeypatch, calls: dict[str, int]) -> None:
    """Count which way each layer ran (whole batch, split, keys/values from the function or the layer)."""
    for name in ("_run_whole", "_keys_values"):
        original = getattr(loop._Router, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            if _name == "_keys_values" and self.keys_values is None:
                calls["from_the_layer"] = calls.get("from_the_layer", 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(loop._Router, name, counted)


@pytest.mark.parametrize("policy, thresholds", CASES)
def test_every_way_of_running_a_layer_decodes_the_same(loaded, policy, thresholds, monkeypatch):
    expected = _decoded(loaded, policy, thresholds)
    assert {k for _, exits in expected for k in exits} - {N_LAYERS}, "no token exited early: vacuous"
    calls: dict[str, int] = {}
    _spy(monkeypatch, calls)

    monkeypatch.setattr(loop, "SPLIT_BELOW", 1.0)  # split as soon as one row has exited
    assert _decoded(loaded, policy, thresholds) == expected
    assert calls.get("_keys_values", 0) > 0 and calls.get("_run_whole", 0) == 0

    calls.clear()
    monkeypatch.setattr(loop, "SPLIT_BELOW", 0.0)  # the whole batch until every row has exited
    assert _decoded(loaded, policy, thresholds) == expected
    assert calls.get("_run_whole", 0) > 0

    calls.clear()
    monkeypatch.setattr(loop, "SPLIT_BELOW", 1.0)
    without_function = replace(loaded, spec=replace(loaded.spec, keys_values=None))
    assert _decoded(without_function, policy, thresholds) == expected
    assert calls.get("from_the_layer", 0) > 0


def test_once_every_row_has_exited_the_step_reads_no_more_counts(loaded, monkeypatch):
    """Threshold 0: every token exits at the floor, so each decoding step reads the climbing count once
    (the layer after the floor) and its later layers, keys and values only, never stall on a read."""
    reads: list[int] = []
    original = loop._count_climbing
    monkeypatch.setattr(loop, "_count_climbing", lambda done: reads.append(1) or original(done))
    params = GenerationParams(max_new_tokens=6, exit_policy="confidence", threshold=0.0, min_layers=2)
    done = generate(loaded, PROMPTS, [], params)
    assert {k for c in done for k in c.exit_layers} == {2}
    decoding_steps = max(len(c.token_ids) for c in done) - 1  # the first token comes from the prefill
    assert decoding_steps > 0 and len(reads) == decoding_steps, (len(reads), decoding_steps)
