"""Activations, per-layer probes, directions, ablation and the `probe` command (engine.probes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import N_LAYERS, build_tiny_model
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine import lag, probes, queries
from engine.cli import main
from engine.datasets import to_csv
from engine.generation import encode_prompts, generate
from engine.lenses import logit
from engine.models import from_objects
from engine.probes import cv
from engine.types import GenerationParams, Prompt, model_input

FILLERS = [
    "How do I",
    "Write a poem about",
    "Explain the",
    "What is the",
    "Tell me about",
    "Hello world",
    "Step 1",
    "Sure, here is",
    "The capital of",
    "Mix flour and",
]


def synthetic_prompts() -> list[Prompt]:
    """Harmful and benign prompts share their openings and differ in their last words.

    Without a chat template the last token tells the label apart (layer 0 separates perfectly); with
    one, the last token is the template's and the label can only arrive through attention.
    """
    harmful = [Prompt(f"h{i}", f"{f} bomb bomb bomb", "harmful") for i, f in enumerate(FILLERS)]
    benign = [Prompt(f"b{i}", f"{f} bread bread bread", "benign") for i, f in enumerate(FILLERS)]
    return [p for pair in zip(harmful, benign, strict=True) for p in pair]


@pytest.fixture(scope="module")
def loaded(tiny_tokenizer):
    return from_objects(build_tiny_model("llama", n_layers=N_LAYERS), tiny_tokenizer)


@pytest.fixture(scope="module")
def chat_activations(loaded):
    return probes.collect_activations(loaded, synthetic_prompts(), GenerationParams(), cache_dir=None)


@pytest.fixture(scope="module")
def raw_activations(loaded):
    params = GenerationParams(chat_template=False)
    return probes.collect_activations(loaded, synthetic_prompts(), params, cache_dir=None)


def _reference_cv(x: np.ndarray, y: np.ndarray, estimator, scoring: str = "accuracy") -> np.ndarray:
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return cross_val_score(estimator, x, y, cv=cv, scoring=scoring)


def test_activations_are_the_last_token_residuals_of_each_prompt(loaded, chat_activations):
    prompts = synthetic_prompts()
    assert chat_activations.residuals.shape == (len(prompts), N_LAYERS + 1, loaded.info.hidden_size)
    assert chat_activations.n_layers == N_LAYERS
    np.testing.assert_array_equal(chat_activations.harmful, [p.label == "harmful" for p in prompts])
    alone = logit.last_token_residuals(loaded, [prompts[3].text], batch_size=1).numpy()[0]
    np.testing.assert_allclose(chat_activations.residuals[3], alone, atol=2e-5, rtol=1e-4)


def test_contextual_prompts_are_read_with_their_context_as_the_sweep_asks_them(loaded):
    prompt = Prompt("ctx", "Summarise the text above", "harmful", context="A long article about bread.")
    acts = probes.collect_activations(loaded, [prompt], cache_dir=None)
    asked = logit.last_token_residuals(
        loaded, ["A long article about bread.\n\n---\n\nSummarise the text above"]
    )
    np.testing.assert_allclose(acts.residuals, asked.numpy(), atol=1e-6)
    bare = logit.last_token_residuals(loaded, [prompt.text]).numpy()
    assert np.abs(acts.residuals - bare).max() > 1e-3


def test_probe_accuracy_matches_sklearn_cross_val_score(chat_activations):
    results = probes.probe_layers(chat_activations, folds=5, seed=0)
    assert [r.layer for r in results] == list(range(N_LAYERS + 1))
    y = chat_activations.harmful
    for layer in (0, 2, N_LAYERS):
        x = chat_activations.layer(layer).astype(np.float64)
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        accuracy = _reference_cv(x, y, pipeline)
        auroc = _reference_cv(x, y, pipeline, "roc_auc")
        assert results[layer].accuracy == pytest.approx(accuracy.mean(), abs=1e-12)
        assert results[layer].accuracy_std == pytest.approx(accuracy.std(), abs=1e-12)
        assert results[layer].auroc == pytest.approx(auroc.mean(), abs=1e-12)
        if layer > 0:  # diff of means with a mid-point threshold is the nearest-centroid classifier
            centroid = _reference_cv(x, y, NearestCentroid())
            assert results[layer].dom_accuracy == pytest.approx(centroid.mean(), abs=1e-12)
    # The template's last token is the same for every prompt: layer 0 carries no label at all.
    assert np.ptp(chat_activations.layer(0), axis=0).max() == 0
    assert results[0].auroc == 0.5
    # Attention brings the label in: the set is recoverable and a harm-detection layer exists.
    assert results[N_LAYERS].accuracy >= 0.95
    # one fit per fold also gives each prompt's out-of-fold correctness, averaging to the accuracy
    splits = cv.stratified_folds(y)
    for result in results:
        assert cv.fold_mean_accuracy(np.array(result.correct), splits) == pytest.approx(result.accuracy)


def test_without_template_layer0_separates_on_the_last_real_token(raw_activations):
    """Left padding must not shift the read-out onto a pad: layer 0 is then the last word's embedding."""
    results = probes.probe_layers(raw_activations)
    assert results[0].accuracy == 1.0 and results[0].dom_accuracy == 1.0
    x0 = raw_activations.layer(0)
    assert np.ptp(x0[raw_activations.harmful], axis=0).max() == 0  # every harmful row ends in "bomb"


def test_words_alone_are_no_harm_detection(loaded, tmp_path):
    """The label sits in the prompt's words: the probe separates perfectly at layer 0, but so does a bag
    of words, so no layer is credited with detecting harm (the old 95 % threshold said layer 0)."""
    analysis = probes.analyse(
        loaded, synthetic_prompts(), GenerationParams(chat_template=False), cache_dir=None
    )
    assert analysis.probes[0].accuracy == 1.0
    assert analysis.baselines["bow"].accuracy == 1.0 and analysis.baselines["embedding"].accuracy == 1.0
    assert analysis.lag.harm_detection_layer is None
    assert not any(row["beats_baselines"] for row in analysis.layer_rows())
    reason = lag.no_detection_reason(
        {name: b.accuracy for name, b in analysis.baselines.items()}, analysis.lag.harm_detection_layer
    )
    assert reason is not None and "100%" in reason and "'contrast'" in reason  # the page says why, in words


def test_no_detection_reason_only_when_the_words_explain_it():
    assert lag.no_detection_reason({"bow": 0.92, "embedding": 0.8}, None).startswith("No layer can show")
    assert lag.no_detection_reason({"bow": 0.92}, 3) is None  # a layer does detect harm
    assert lag.no_detection_reason({"bow": 0.5, "embedding": 0.55}, None) is None  # words do not explain it
    assert lag.no_detection_reason({}, None) is None  # results stored before the baselines


def test_mean_input_embeddings_average_the_bare_tokens(loaded):
    texts = [model_input(p) for p in synthetic_prompts()[:5]] + ["a much longer prompt " * 5]
    means = probes.mean_input_embeddings(loaded, texts, batch_size=4)  # padded batches of unequal lengths
    table = loaded.model.get_input_embeddings().weight.detach().float().numpy()
    for text, mean in zip(texts, means, strict=True):
        ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        np.testing.assert_allclose(mean, table[ids].mean(0), rtol=1e-5, atol=1e-6)


def test_too_few_labelled_prompts_is_a_clear_error(loaded):
    prompts = [Prompt("a", "bomb", "harmful"), Prompt("b", "bread", "benign"), Prompt("c", "x", "benign")]
    acts = probes.collect_activations(loaded, prompts, cache_dir=None)
    with pytest.raises(ValueError, match="at least 2 harmful and 2 benign"):
        probes.probe_layers(acts)


# ---------------------------------------------------------------- directions


def test_diff_of_means_and_cosine_matrices(chat_activations):
    dom = probes.diff_of_means_directions(chat_activations)
    r, y = chat_activations.residuals.astype(np.float64), chat_activations.harmful
    layer = 4
    expected = r[y, layer].mean(0) - r[~y, layer].mean(0)
    np.testing.assert_allclose(dom[layer], expected / np.linalg.norm(expected), rtol=1e-9)
    assert not dom[0].any()  # identical embeddings: no direction, not NaN
    cosines = probes.cosine_matrix(dom)
    assert cosines.shape == (N_LAYERS + 1, N_LAYERS + 1)
    np.testing.assert_allclose(cosines, cosines.T)
    np.testing.assert_allclose(np.diag(cosines)[1:], 1.0)
    a, b = r[y, 2].mean(0) - r[~y, 2].mean(0), r[y, 5].mean(0) - r[~y, 5].mean(0)
    assert cosines[2, 5] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert probes.refusal_direction(chat_activations, layer) == pytest.approx(dom[layer])
    with pytest.raises(ValueError, match="same mean"):
        probes.refusal_direction(chat_activations, 0)
    with pytest.raises(ValueError, match="out of range"):
        probes.refusal_direction(chat_activations, N_LAYERS + 1)


def test_probe_direction_orders_prompts_like_the_fitted_probe(chat_activations):
    """The direction in raw residual coordinates is the fitted pipeline's decision function, up to scale."""
    directions = probes.probe_directions(chat_activations)
    layer = N_LAYERS
    x = chat_activations.layer(layer).astype(np.float64)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        x, chat_activations.harmful
    )
    decision = fitted.decision_function(x)
    assert np.linalg.norm(directions[layer]) == pytest.approx(1.0)
    assert np.corrcoef(x @ directions[layer], decision)[0, 1] == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------- cache


def test_activation_cache_is_reused_and_keyed_by_template(loaded, tmp_path, monkeypatch):
    prompts = synthetic_prompts()[:6]
    first = probes.collect_activations(loaded, prompts, cache_dir=tmp_path)
    path = probes.activations_path(loaded.info.model_hash, first.set_id, GenerationParams(), tmp_path)
    assert path.exists() and first.set_id in path.name and loaded.info.model_hash in path.name

    def no_forward(*_args, **_kwargs):
        raise AssertionError("the model ran although the activations are cached")

    monkeypatch.setattr(logit, "last_token_residuals", no_forward)
    again = probes.collect_activations(loaded, prompts, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.residuals, first.residuals)
    raw = GenerationParams(chat_template=False)
    assert probes.activations_path(loaded.info.model_hash, first.set_id, raw, tmp_path) != path
    with pytest.raises(AssertionError, match="the model ran"):
        probes.collect_activations(loaded, prompts, raw, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="the model ran"):  # same set, other order: not reused
        probes.collect_activations(loaded, prompts[::-1], cache_dir=tmp_path)


# ---------------------------------------------------------------- ablation


def _layer_state(loaded) -> list[tuple[int, int, int]]:
    """Which module objects are the decoder layers, and their hooks."""
    return [(id(layer), len(layer._forward_hooks), len(layer._forward_pre_hooks)) for layer in loaded.layers]


def _reference_ablated_greedy(loaded, prompt_ids: list[int], direction: np.ndarray, layers: int, steps: int):
    """Independent reference: run the first ``layers`` decoder layers by hand, projecting the direction
    out of the embeddings and every layer output; no cache, no padding, full recompute per token."""
    inner, r = loaded.model.model, torch.tensor(direction, dtype=torch.float32)

    def project(hidden):
        return hidden - (hidden @ r)[..., None] * r

    tokens = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(steps):
            ids = torch.tensor([tokens])
            positions = torch.arange(len(tokens))[None]
            causal = torch.full((len(tokens), len(tokens)), float("-inf")).triu(1)[None, None]
            hidden = project(inner.embed_tokens(ids))
            rotary = inner.rotary_emb(hidden, positions)
            for layer in inner.layers[:layers]:
                out = layer(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rotary)
                hidden = project(out[0] if isinstance(out, tuple) else out)
            tokens.append(int(loaded.logits_from_hidden(hidden[0, -1]).argmax()))
            if tokens[-1] in loaded.eos_token_ids:
                break
    return tuple(tokens[len(prompt_ids) :])


def test_ablated_generation_matches_a_hand_run_reference(loaded, chat_activations):
    direction = probes.refusal_direction(chat_activations, 3)
    texts = [p.text for p in synthetic_prompts()[:4]]
    params = GenerationParams(max_new_tokens=5)
    depths = [3, N_LAYERS]
    plain = generate(loaded, texts, depths, params)
    ablated = probes.generate_ablated(loaded, texts, depths, direction, params)  # batched, depth-routed
    encoded = encode_prompts(loaded.tokenizer, texts, params)
    reference = [_reference_ablated_greedy(loaded, ids, direction, k, 5) for ids in encoded for k in depths]
    assert [c.token_ids for c in ablated] == reference
    assert [c.token_ids for c in ablated] != [c.token_ids for c in plain]
    again = generate(loaded, texts, depths, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in plain], "the model is restored afterwards"


def test_ablation_removes_the_direction_from_every_residual(loaded, chat_activations):
    direction = probes.refusal_direction(chat_activations, 3)
    texts = [p.text for p in synthetic_prompts()[:4]]
    before = logit.last_token_residuals(loaded, texts).numpy()
    with probes.ablated_direction(loaded, direction):
        inside = logit.last_token_residuals(loaded, texts).numpy()
    assert np.abs(before @ direction).max() > 0.1
    assert np.abs(inside @ direction).max() < 1e-4


def test_ablation_is_undone_even_when_the_body_raises(loaded, chat_activations):
    direction = probes.refusal_direction(chat_activations, 3)
    before = _layer_state(loaded)
    with pytest.raises(RuntimeError, match="boom"), probes.ablated_direction(loaded, direction):
        assert _layer_state(loaded) != before
        raise RuntimeError("boom")
    assert _layer_state(loaded) == before
    with pytest.raises(ValueError, match="non-zero vector"):
        probes.ablated_direction(loaded, np.zeros(loaded.info.hidden_size)).__enter__()
    assert _layer_state(loaded) == before


# ---------------------------------------------------------------- analysis, store and CLI


def test_analysis_rows_and_records_agree(loaded, tmp_path):
    analysis = probes.analyse(loaded, synthetic_prompts(), cache_dir=tmp_path)
    rows = analysis.layer_rows()
    assert [r["layer"] for r in rows] == list(range(N_LAYERS + 1))
    mass = logit.refusal_mass(loaded, torch.from_numpy(analysis.activations.residuals))
    harmful = analysis.activations.harmful
    assert rows[2]["refusal_mass_harmful"] == pytest.approx(mass[harmful, 2].mean())
    assert rows[2]["refusal_mass_benign"] == pytest.approx(mass[~harmful, 2].mean())
    correct = np.array([p.correct for p in analysis.probes])
    by_name = {name: b.correct for name, b in analysis.baselines.items()}
    assert analysis.lag.harm_detection_layer == lag.detect_harm(correct, by_name)
    versus = lag.layers_vs_baseline(correct, by_name)
    assert [r["beats_baselines"] for r in rows] == [v.passes for v in versus]
    assert rows[3]["baseline_p_value"] == versus[3].p_value
    records = probes.probe_records(analysis, probes.save_directions(analysis, tmp_path))
    assert len(records) == 2 * (N_LAYERS + 1) + 2  # logreg and diff-of-means per layer, two baselines
    stored_baselines = {r.kind: r.accuracy for r in records if r.kind.startswith("baseline-")}
    assert stored_baselines == {f"baseline-{n}": b.accuracy for n, b in analysis.baselines.items()}
    assert queries.probe_baselines(records) == {n: b.accuracy for n, b in analysis.baselines.items()}
    table = queries.probe_table(records)
    assert list(table["layer"]) == list(range(N_LAYERS + 1))
    assert queries.lag_view(table, N_LAYERS).harm_detection_layer == analysis.lag.harm_detection_layer
    logreg = {r.layer: r for r in records if r.kind == "logreg"}
    assert logreg[4].accuracy == rows[4]["accuracy"] and logreg[4].auroc == rows[4]["auroc"]
    ref, index = logreg[4].extra["direction_ref"].split("#")
    with np.load(tmp_path / ref) as saved:
        np.testing.assert_allclose(saved["probe"][4], analysis.probe_directions[4])
    assert index == "probe[4]"


def test_probe_command_json_contract_and_store(tiny_model_dir, tmp_path, db_path, capsys):
    from engine.store import Store

    csv = tmp_path / "set.csv"
    csv.write_text(to_csv(synthetic_prompts()), encoding="utf-8")
    args = ["probe", "--model", str(tiny_model_dir), "--prompts", str(csv), "--json", "--db", str(db_path)]
    assert main([*args, "--cache-dir", str(tmp_path / "acts")]) == 0
    document = json.loads(capsys.readouterr().out)
    *layers, summary = document
    assert [row["layer"] for row in layers] == list(range(9))  # the fixture checkpoint has 8 layers
    for row in layers:
        assert {"accuracy", "accuracy_std", "auroc"} <= set(row)
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["auroc"] <= 1
    assert {"harm_detection_layer", "refusal_emergence_layer", "lag_layers", "lag_percent"} <= set(summary)
    assert summary["n_layers"] == 8 and summary["n_prompts"] == 20
    assert 0 <= summary["baseline_bow_accuracy"] <= 1 and 0 <= summary["baseline_embedding_accuracy"] <= 1
    assert summary["harm_detection_margin"] == lag.HARM_DETECTION_MARGIN
    assert "McNemar" in summary["harm_detection_test"]
    assert summary["harm_detection_best_baseline"] in ("bow", "embedding")
    assert summary["training_overlap"] is None  # not the demo model
    assert all(isinstance(row["beats_baselines"], bool) for row in layers)
    with Store.open(db_path, read_only=True) as store:
        stored = {
            r.layer: r for r in store.get_probe_results(model_hash=summary["model_hash"], kind="logreg")
        }
    assert sorted(stored) == list(range(9))
    assert stored[5].accuracy == pytest.approx(layers[5]["accuracy"])
    assert stored[5].set_id == summary["set_id"]


@pytest.mark.parametrize("foreign", ["text", "empty", "other duckdb"])
def test_probe_command_refuses_a_foreign_db_untouched_before_any_compute(
    tiny_model_dir, tmp_path, capsys, monkeypatch, foreign
):
    """``--db`` naming a file that is not positively a DepthScope database: one sentence, exit 2, the
    file byte for byte as it was, and no probe run first (the old code ran the probes, then refused)."""
    import duckdb

    import engine.cli.probe

    db = tmp_path / "results.duckdb"
    if foreign == "other duckdb":
        with duckdb.connect(str(db)) as con:
            con.execute("CREATE TABLE invoices (id INTEGER)")
    else:
        db.write_bytes(b"" if foreign == "empty" else b"my notes, not a database\n")
    before = db.read_bytes()

    def no_analysis(*_args, **_kwargs):
        raise AssertionError("the probes ran before --db was checked")

    monkeypatch.setattr(engine.cli.probe, "_analyse", no_analysis)
    csv = tmp_path / "set.csv"
    csv.write_text(to_csv(synthetic_prompts()), encoding="utf-8")
    code = main(["probe", "--model", str(tiny_model_dir), "--prompts", str(csv), "--db", str(db)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(db) in err and ("not a DuckDB database" in err or "not a DepthScope" in err), err
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.duckdb", "set.csv"]  # no WAL, no copy


@pytest.mark.slow
def test_probe_on_the_default_model_and_demo_set(tmp_path):
    from engine.datasets import load_prompt_set
    from engine.models import load_model

    loaded = load_model()
    analysis = probes.analyse(loaded, load_prompt_set("demo"), cache_dir=tmp_path)
    assert len(analysis.probes) == loaded.n_layers + 1 == 31
    assert max(p.accuracy for p in analysis.probes) >= 0.95
    assert set(analysis.baselines) == {"bow", "embedding"}


def test_a_set_without_both_labels_is_one_sentence_before_any_compute(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """A set of harmful prompts only cannot be probed: exit 2 with one sentence, no model loaded."""
    import engine.cli.probe

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model loaded for a set that cannot be probed")

    monkeypatch.setattr(engine.cli.probe, "_analyse", no_model)
    csv = tmp_path / "harmful-only.csv"
    csv.write_text(to_csv([Prompt(f"h{i}", f"harmful request {i}", "harmful") for i in range(5)]))
    code = main(
        ["probe", "--model", str(tiny_model_dir), "--prompts", str(csv), "--db", str(tmp_path / "r.duckdb")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "at least 2 harmful and 2 benign" in err and "(got 5 harmful, 0 benign)" in err, err


def test_the_probe_use_case_checks_the_labels_before_any_compute(loaded, monkeypatch):
    from engine import usecases
    from engine.errors import UserInputError

    monkeypatch.setattr(probes, "analyse", lambda *a, **k: pytest.fail("activations computed"))
    prompts = [Prompt("a", "bomb", "harmful"), Prompt("b", "bread", "benign"), Prompt("c", "x", "benign")]
    with pytest.raises(UserInputError, match="at least 2 harmful and 2 benign"):
        usecases.run_probe(None, loaded, prompts, "tiny", GenerationParams(), cache_dir=None)
