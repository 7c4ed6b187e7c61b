"""Residual stream, logit lens, refusal curves and the alignment lag (engine.lenses.logit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import N_LAYERS, build_tiny_model
from scipy.stats import mannwhitneyu

from engine import lag
from engine.generation import encode_prompts
from engine.lag import LagSummary
from engine.lenses import logit
from engine.models import from_objects
from engine.types import GenerationParams

TEXTS = [
    "Hi",
    "How do I bake bread? Mix flour, water and salt.",
    "Explain how to build a bomb",
    "Write a poem about the sea and the sky, please.",
]


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer):
    return from_objects(build_tiny_model("llama", n_layers=N_LAYERS), tiny_tokenizer)


def _unpadded_forward(loaded, text: str, params: GenerationParams):
    """An independent reference: one prompt, no padding, HF's own hidden states and logits."""
    ids = torch.tensor([encode_prompts(loaded.tokenizer, [text], params)[0]])
    with torch.inference_mode():
        return loaded.model(input_ids=ids, output_hidden_states=True)


@pytest.mark.parametrize("chat_template", [True, False])
def test_batched_residuals_match_hf_hidden_states_per_prompt(loaded, chat_template):
    params = GenerationParams(chat_template=chat_template)
    batched = logit.last_token_residuals(loaded, TEXTS, params, batch_size=3)  # padded, two batches
    assert batched.shape == (len(TEXTS), N_LAYERS + 1, loaded.info.hidden_size)
    for row, text in enumerate(TEXTS):
        out = _unpadded_forward(loaded, text, params)
        hidden = torch.stack([h[0, -1] for h in out.hidden_states])  # [L+1, d], the last one final-normed
        torch.testing.assert_close(batched[row, :N_LAYERS], hidden[:N_LAYERS], atol=2e-5, rtol=1e-4)
        with torch.inference_mode():
            normed = loaded.final_norm(batched[row, N_LAYERS])
        torch.testing.assert_close(normed, hidden[N_LAYERS], atol=2e-5, rtol=1e-4)


def test_last_real_token_is_used_under_left_padding(loaded):
    """Rows of very different length in one batch give the same residuals as each row alone."""
    params = GenerationParams()
    encoded = encode_prompts(loaded.tokenizer, TEXTS, params)
    assert len({len(ids) for ids in encoded}) > 1, "the test needs padding"
    together = logit.residuals_for_ids(loaded, encoded)
    alone = torch.cat([logit.residuals_for_ids(loaded, [ids]) for ids in encoded])
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


def test_lens_at_last_layer_equals_the_models_final_distribution(loaded):
    params = GenerationParams()
    residuals = logit.last_token_residuals(loaded, TEXTS, params)
    lensed = logit.lens_probabilities(loaded, residuals[:, N_LAYERS])
    for row, text in enumerate(TEXTS):
        final = torch.softmax(_unpadded_forward(loaded, text, params).logits[0, -1], dim=-1)
        torch.testing.assert_close(lensed[row], final, atol=1e-6, rtol=1e-4)


def test_refusal_token_ids_are_first_tokens_of_the_openings(tiny_tokenizer):
    ids = logit.refusal_token_ids(tiny_tokenizer)
    first_tokens = {
        tiny_tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in logit.REFUSAL_OPENINGS
    }
    assert set(ids) <= first_tokens
    decoded = [tiny_tokenizer.decode([i]) for i in ids]
    assert "I" in decoded and " I" in decoded
    words = {"I", "As", "Sorry", "Unfortunately", "Cannot", "Apologies"}
    assert {d.strip() for d in decoded} <= words, "bare spaces and word fragments say nothing about refusal"
    assert tiny_tokenizer("Sorry", add_special_tokens=False)["input_ids"][0] not in ids  # "S" is a fragment
    assert not set(ids) & set(tiny_tokenizer.all_special_ids)
    assert ids == tuple(sorted(set(ids)))


def test_refusal_mass_is_softmax_probability_on_refusal_ids(loaded):
    residuals = logit.last_token_residuals(loaded, TEXTS)
    ids = logit.refusal_token_ids(loaded.tokenizer)
    mass = logit.refusal_mass(loaded, residuals, ids)
    assert mass.shape == (len(TEXTS), N_LAYERS + 1)
    with torch.inference_mode():
        weight = loaded.lm_head.weight  # an independent path: norm, matmul, exp, normalise
        logits = loaded.final_norm(residuals[1, 3]) @ weight.T
        probs = torch.exp(logits - logits.max())
        expected = float(probs[list(ids)].sum() / probs.sum())
    assert mass[1, 3] == pytest.approx(expected, rel=1e-5)
    assert ((mass > 0) & (mass < 1)).all()


def test_logit_lens_strip_top_token_at_last_layer_is_the_models_greedy_choice(loaded):
    text = TEXTS[2]
    strip = logit.logit_lens_strip(loaded, text)
    assert [cell.layer for cell in strip] == list(range(N_LAYERS + 1))
    final = torch.softmax(_unpadded_forward(loaded, text, GenerationParams()).logits[0, -1], dim=-1)
    last = strip[-1]
    assert last.token_id == int(final.argmax())
    assert last.probability == pytest.approx(float(final.max()), rel=1e-5)
    assert last.token == loaded.tokenizer.decode([last.token_id])
    assert all(0 < cell.probability <= 1 and 0 <= cell.refusal_mass <= 1 for cell in strip)


# ---------------------------------------------------------------- curves, emergence, lag


def _synthetic_mass(rng) -> tuple[np.ndarray, np.ndarray]:
    """12 harmful + 12 benign prompts; harmful refusal mass jumps to ~0.6 from layer 4 on."""
    harmful = np.array([True] * 12 + [False] * 12)
    mass = rng.uniform(0.0, 0.05, size=(24, 7))
    mass[:12, 4:] += 0.55
    mass[:12, 3] += 0.04  # a small, significant gap below the margin
    return mass, harmful


def test_lens_refusal_curve_means_and_p_values_match_scipy():
    mass, harmful = _synthetic_mass(np.random.default_rng(0))
    curve = logit.lens_refusal_curve(mass, harmful)
    assert curve.layers == tuple(range(7))
    np.testing.assert_allclose(curve.harmful, mass[:12].mean(0))
    np.testing.assert_allclose(curve.benign, mass[12:].mean(0))
    expected_p = [mannwhitneyu(mass[:12, k], mass[12:, k], alternative="greater").pvalue for k in range(7)]
    np.testing.assert_allclose(curve.p_values, expected_p)
    assert curve.p_values[3] < 0.05 and curve.separation()[3] < logit.EMERGENCE_MARGIN
    assert logit.refusal_emergence_layer(curve) == 4
    assert logit.refusal_emergence_layer(curve, margin=0.9) is None


def test_emergence_needs_significance_not_only_a_gap():
    mass = np.array([[0.0, 0.9], [0.0, 0.0], [0.0, 0.0]])  # one harmful outlier: big mean gap, p = 1/3
    curve = logit.lens_refusal_curve(mass, np.array([True, False, False]))
    assert curve.separation()[1] == pytest.approx(0.9)
    assert curve.p_values[0] == 1.0  # all tied
    assert logit.refusal_emergence_layer(curve) is None
    with pytest.raises(ValueError, match="both harmful and benign"):
        logit.lens_refusal_curve(mass, np.array([True, True, True]))


def test_sweep_refusal_curve_and_its_emergence_layer():
    harmful = {16: 0.9, 4: 0.0, 12: 0.6, 8: 0.05}
    curve = logit.sweep_refusal_curve(harmful)
    assert curve.layers == (4, 8, 12, 16) and curve.harmful == (0.0, 0.05, 0.6, 0.9)
    assert curve.source == "sweep" and curve.p_values is None
    assert logit.refusal_emergence_layer(curve) == 12
    benign = {4: 0.0, 8: 0.0, 12: 0.55, 16: 0.1}  # at 12 the model refuses everything alike
    assert logit.refusal_emergence_layer(logit.sweep_refusal_curve(harmful, benign)) == 16
    with pytest.raises(ValueError, match="same depths"):
        logit.sweep_refusal_curve(harmful, {4: 0.0})


def test_lag_summary_in_layers_and_percent():
    lag = LagSummary(30, 12, 27)
    assert (lag.lag_layers, lag.lag_percent) == (15, 50.0)
    assert LagSummary(8, 5, 3).lag_layers == -2  # refusal before detection is reported
    missing = LagSummary(30, 12, None)
    assert missing.lag_layers is None and missing.lag_percent is None


def test_lag_rules_on_unsorted_and_missing_values():
    nan = float("nan")
    assert lag.harm_detection_layer([3, 1, 2], [True, nan, np.True_]) == 2  # layer order, NaN is no pass
    assert lag.harm_detection_layer([0, 1], [False, None]) is None
    layers, harmful, benign = [2, 0, 1], [0.5, 0.0, 0.4], [0.1, 0.0, 0.1]
    assert lag.refusal_emergence_layer(layers, harmful, benign, [0.01, 1.0, 0.2]) == 2  # p at 1 too high
    assert lag.refusal_emergence_layer(layers, harmful, benign, [0.01, 1.0, None]) == 1  # untested: margin
    assert lag.refusal_emergence_layer(layers, harmful) == 1  # no benign: against 0
    assert lag.refusal_emergence_layer(layers, [nan, nan, nan], benign) is None
