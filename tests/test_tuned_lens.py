"""Tuned lens (engine.lenses.tuned, engine.lenses.training): identity equals raw, training beats raw
on held-out text, files round trip, and the tuned head drives static and dynamic exit alike."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model

import engine.lenses.files
from engine.generation import generate
from engine.lenses.logit import last_token_residuals
from engine.lenses.training import TrainedLens, layer_kl, save_lens
from engine.lenses.tuned import LensNotFoundError, TunedLens, load_lens
from engine.models import from_objects
from engine.types import GenerationParams
from engine.usecases import train_tuned_lens

N_LAYERS = 4
TEXTS = [
    "How do I bake bread at home?",
    "Write a poem about the sea and the sky.",
    "What is the capital of France?",
    "Give me three facts about chess.",
    "Explain volcanoes to a child.",
    "Suggest a quick breakfast with eggs.",
    "How long should I boil an egg?",
    "Tell me about bicycles and how gears work.",
    "What should I plant in a small garden?",
    "How do tax forms work for a first job?",
]
PROMPTS = ["How do I bake bread?", "Write a poem about the sea and the sky, please.", "Hello"]


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer):
    return from_objects(build_tiny_model("llama", n_layers=N_LAYERS), tiny_tokenizer)


@pytest.fixture(scope="module")
def trained(loaded) -> TrainedLens:
    return train_tuned_lens(loaded, TEXTS, steps=150, batch_tokens=32, lr=3e-3, generate_tokens=12, seed=1)


@pytest.fixture
def lens_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.lenses.files, "LENS_DIR", tmp_path)
    return tmp_path


def random_lens(seed: int = 0, scale: float = 0.3) -> TunedLens:
    lens = TunedLens(N_LAYERS, 64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=generator) * scale / 8)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=generator) * scale)
    return lens


def test_identity_translators_are_the_raw_head(loaded):
    lens = TunedLens(N_LAYERS, 64)
    hidden = torch.randn(5, 64)
    for k in range(1, N_LAYERS + 1):
        assert torch.equal(lens.translate(hidden, k), hidden)
    states = torch.randn(20, N_LAYERS, 64)
    assert layer_kl(loaded, lens, states) == layer_kl(loaded, None, states)


def test_identity_lens_generates_the_raw_completions(loaded, lens_dir):
    save_lens(TrainedLens(TunedLens(N_LAYERS, 64), {"model_hash": loaded.info.model_hash}))
    for policy_params in [{}, {"exit_policy": "confidence", "threshold": 0.2, "min_layers": 2}]:
        raw = generate(loaded, PROMPTS, [N_LAYERS, 2], GenerationParams(max_new_tokens=6, **policy_params))
        tuned = generate(
            loaded,
            PROMPTS,
            [N_LAYERS, 2],
            GenerationParams(max_new_tokens=6, exit_head="tuned", **policy_params),
        )
        assert [(c.token_ids, c.exit_layers) for c in tuned] == [(c.token_ids, c.exit_layers) for c in raw]
        assert {c.params_hash for c in tuned}.isdisjoint({c.params_hash for c in raw})


def test_training_beats_raw_at_every_layer_below_the_last(trained):
    report = trained.report
    assert len(report["kl_raw"]) == len(report["kl_tuned"]) == N_LAYERS
    for k in range(N_LAYERS - 1):
        assert report["kl_tuned"][k] < report["kl_raw"][k], (k + 1, report["kl_tuned"], report["kl_raw"])
    assert report["kl_tuned"][-1] == report["kl_raw"][-1] == pytest.approx(0.0, abs=1e-5)
    assert report["n_texts_heldout"] == 2 and report["heldout_tokens"] > 0


def test_kl_is_the_independent_definition(loaded, trained):
    states = torch.randn(7, N_LAYERS, 64)
    k = 2
    with torch.no_grad():
        final = torch.softmax(loaded.logits_from_hidden(states[:, -1]), dim=-1).double()
        translated = (
            states[:, k - 1] + states[:, k - 1] @ trained.lens.weight[k - 1].T + trained.lens.bias[k - 1]
        )
        layer = torch.softmax(loaded.logits_from_hidden(translated), dim=-1).double()
    expected = float((final * (final.log() - layer.log())).sum(-1).mean())
    assert layer_kl(loaded, trained.lens, states)[k - 1] == pytest.approx(expected, rel=1e-4)


def test_save_load_round_trip(loaded, trained, lens_dir):
    path = save_lens(trained)
    assert path.parent == lens_dir and path.name == f"{loaded.info.model_hash}.pt"
    sidecar = json.loads((lens_dir / f"{loaded.info.model_hash}.json").read_text())
    assert sidecar["model_hash"] == loaded.info.model_hash and sidecar["lens_hash"] == trained.lens.lens_hash
    assert {"corpus", "steps", "kl_tuned", "kl_raw"} <= set(sidecar)
    assert engine.lenses.files.read_lens_report(loaded.info.model_hash) == sidecar
    back = load_lens(loaded)
    assert torch.equal(back.weight, trained.lens.weight.detach()) and back.lens_hash == trained.lens.lens_hash


def test_missing_lens_says_how_to_train_one(loaded, lens_dir):
    with pytest.raises(LensNotFoundError, match="lens train"):
        load_lens(loaded)
    with pytest.raises(LensNotFoundError, match="lens train"):
        generate(loaded, PROMPTS, [2], GenerationParams(max_new_tokens=2, exit_head="tuned"))


def test_a_stale_lens_hash_is_refused(loaded, lens_dir):
    save_lens(TrainedLens(random_lens(), {"model_hash": loaded.info.model_hash}))
    with pytest.raises(LensNotFoundError, match="not deadbeef"):
        generate(
            loaded, PROMPTS, [2], GenerationParams(max_new_tokens=2, exit_head="tuned", lens_hash="deadbeef")
        )


def test_static_tuned_head_reads_the_translated_residual(loaded, lens_dir):
    lens = random_lens()
    save_lens(TrainedLens(lens, {"model_hash": loaded.info.model_hash}))
    params = GenerationParams(max_new_tokens=3, exit_head="tuned")
    completions = generate(loaded, PROMPTS, [3, 1], params)
    residuals = last_token_residuals(loaded, PROMPTS, params)  # [n, L+1, H], independent forward
    with torch.no_grad():
        for completion in completions:
            row = PROMPTS.index(completion.prompt_text)
            state = residuals[row, completion.layers]
            expected = int(
                loaded.logits_from_hidden(lens.translate(state[None], completion.layers))[0].argmax()
            )
            assert completion.token_ids[0] == expected
    raw_first = [
        c.token_ids[0] for c in generate(loaded, PROMPTS, [3, 1], GenerationParams(max_new_tokens=3))
    ]
    assert raw_first != [c.token_ids[0] for c in completions]  # the lens really changed the readout


@pytest.mark.parametrize("policy, lowest", [("confidence", 0.0), ("saturation", -1.0)])
def test_lowest_threshold_with_tuned_head_is_static_tuned(loaded, lens_dir, policy, lowest):
    save_lens(TrainedLens(random_lens(), {"model_hash": loaded.info.model_hash}))
    for m in (1, 3):
        static = generate(loaded, PROMPTS, [m], GenerationParams(max_new_tokens=6, exit_head="tuned"))
        exited = generate(
            loaded,
            PROMPTS,
            [],
            GenerationParams(
                max_new_tokens=6, exit_head="tuned", exit_policy=policy, threshold=lowest, min_layers=m
            ),
        )
        assert [c.token_ids for c in exited] == [c.token_ids for c in static]
        assert all(c.exit_layers == (m,) * len(c.token_ids) for c in exited)
