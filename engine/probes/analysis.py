"""The whole probe analysis of one model and prompt set: activations → probes, their content baselines,
directions, the lens refusal curve and the alignment lag (rules in ``engine.lag``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UserInputError
from engine.lag import LagSummary, LayerVsBaseline, harm_detection_layer, layers_vs_baseline
from engine.probes import baselines as content
from engine.probes.activations import (
    ACTIVATIONS_DIR,
    Activations,
    activations_of,
    activations_path,
    collect_activations,
    mean_input_embeddings,
    save_residuals,
)
from engine.probes.cv import stratified_folds
from engine.probes.directions import cosine_matrix, diff_of_means_directions, probe_directions
from engine.probes.linear import DEFAULT_FOLDS, DEFAULT_SEED, LayerProbe, probe_layers
from engine.types import GenerationParams, ModelInfo, Prompt, model_input

if TYPE_CHECKING:
    from engine.executors import Executor, ModelHandle
    from engine.lenses.logit import RefusalCurve
    from engine.models import LoadedModel


@dataclass(frozen=True, eq=False)
class ProbeAnalysis:
    """Everything ``probe`` computes for one model and prompt set."""

    activations: Activations
    probes: list[LayerProbe]
    probe_directions: np.ndarray  # [L+1, hidden], unit
    dom_directions: np.ndarray  # [L+1, hidden], unit
    refusal: RefusalCurve  # logit-lens refusal mass by layer
    lag: LagSummary
    refusal_token_ids: tuple[int, ...]
    baselines: dict[str, content.BaselineResult] = field(default_factory=dict)  # by name, same folds
    vs_baseline: list[LayerVsBaseline] = field(default_factory=list)  # the harm-detection rule per layer
    settings: dict[str, Any] = field(default_factory=dict)

    def probe_cosines(self) -> np.ndarray:
        return cosine_matrix(self.probe_directions)

    def probe_dom_agreement(self) -> np.ndarray:
        """Per layer, cosine between the logistic probe's direction and the diff-of-means direction."""
        return np.sum(self.probe_directions * self.dom_directions, axis=-1)

    def layer_rows(self) -> list[dict[str, Any]]:
        """One plain dict per layer (JSON output, store ``extra``)."""
        agreement = self.probe_dom_agreement()
        n_layers = self.activations.n_layers
        versus = {row.layer: row for row in self.vs_baseline}
        return [
            {
                "layer": p.layer,
                "depth_percent": round(100.0 * p.layer / n_layers, 4),
                "accuracy": p.accuracy,
                "accuracy_std": p.accuracy_std,
                "auroc": p.auroc,
                "dom_accuracy": p.dom_accuracy,
                "probe_dom_cosine": float(agreement[p.layer]),
                "refusal_mass_harmful": self.refusal.harmful[p.layer],
                "refusal_mass_benign": self.refusal.benign[p.layer],
                "refusal_p_value": self.refusal.p_values[p.layer],
                **_versus_fields(versus.get(p.layer)),
            }
            for p in self.probes
        ]


def _versus_fields(row: LayerVsBaseline | None) -> dict[str, Any]:
    """The layer's verdict under the harm-detection rule (stored, so pages read it without refitting)."""
    if row is None:
        return {}
    return {
        "beats_baselines": row.passes,
        "best_baseline": row.baseline,
        "baseline_gain": row.gain,
        "baseline_p_value": row.p_value,
    }


def content_baselines(
    embeddings: np.ndarray, prompts: Sequence[Prompt], activations: Activations, folds: int, seed: int
) -> dict[str, content.BaselineResult]:
    """Bag-of-words and mean-embedding baselines on the probes' folds, from the bare prompt (what the
    model reads, without the chat template). ``embeddings``: :func:`mean_input_embeddings` of the prompts."""
    texts = [model_input(p) for p in prompts]
    splits = stratified_folds(activations.harmful, folds, seed)
    found = [
        content.bag_of_words_baseline(texts, activations.harmful, splits),
        content.mean_embedding_baseline(embeddings, activations.harmful, splits),
    ]
    return {b.name: b for b in found}


def training_overlap(info: ModelInfo, prompts: Sequence[Prompt]) -> int | None:
    """For the demo model: how many probe prompts it was trained on (None for any other model)."""
    from engine import modelfiles

    if not modelfiles.is_demo_model(info.model_id):
        return None
    from engine.demo_model.corpus import training_overlap as count

    return count(prompts)


def analyse(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    params: GenerationParams | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    cache_dir: Path | str | None = ACTIVATIONS_DIR,
) -> ProbeAnalysis:
    """Activations → probes, directions, lens refusal curve and the alignment lag."""
    import torch

    from engine.lenses import logit

    activations = collect_activations(loaded, prompts, params, cache_dir=cache_dir)
    refusal_ids = logit.refusal_token_ids(loaded.tokenizer)
    mass = logit.refusal_mass(loaded, torch.from_numpy(activations.residuals), refusal_ids)
    embeddings = mean_input_embeddings(loaded, [model_input(p) for p in prompts])
    return analyse_collected(
        loaded.info, prompts, activations, mass, refusal_ids, embeddings, folds=folds, seed=seed
    )


def analyse_with(
    executor: Executor,
    model: ModelHandle,
    prompts: Sequence[Prompt],
    params: GenerationParams | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
    cache_dir: Path | str | None = ACTIVATIONS_DIR,
    prompts_per_chunk: int | None = None,
) -> ProbeAnalysis:
    """:func:`analyse` with the model where ``executor`` runs it (Ray actors, one prompt chunk each):
    only activations, lens refusal mass and input embeddings come back; the probes are fitted here.

    The residuals are written to the activation cache as :func:`analyse` writes them.
    """
    if not prompts:
        raise UserInputError("no prompts to collect activations for")
    params = params or GenerationParams()
    size = prompts_per_chunk or executor.prompts_per_chunk or len(prompts)
    chunks = [list(prompts[start : start + size]) for start in range(0, len(prompts), size)]
    collected = dict(executor.collect(model, chunks, params))
    parts = [collected[i] for i in range(len(chunks))]  # back in prompt order
    residuals = np.concatenate([p.residuals for p in parts])
    activations = activations_of(model.info.model_hash, prompts, params, residuals)
    if cache_dir:
        save_residuals(
            activations_path(model.info.model_hash, activations.set_id, params, cache_dir), residuals, prompts
        )
    mass = np.concatenate([p.refusal_mass for p in parts])
    embeddings = np.concatenate([p.mean_embeddings for p in parts])
    return analyse_collected(
        model.info, prompts, activations, mass, parts[0].refusal_token_ids, embeddings, folds=folds, seed=seed
    )


def analyse_collected(
    info: ModelInfo,
    prompts: Sequence[Prompt],
    activations: Activations,
    refusal_mass: np.ndarray,
    refusal_ids: Sequence[int],
    embeddings: np.ndarray,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = DEFAULT_SEED,
) -> ProbeAnalysis:
    """The model-free half: probes, content baselines, directions, the refusal curve and the lag, from
    arrays collected here or on Ray actors."""
    from engine.lenses import logit

    probes = probe_layers(activations, folds=folds, seed=seed)
    baselines = content_baselines(embeddings, prompts, activations, folds, seed)
    versus = layers_vs_baseline(
        np.array([p.correct for p in probes]), {name: b.correct for name, b in baselines.items()}
    )
    detected = harm_detection_layer([row.layer for row in versus], [row.passes for row in versus])
    curve = logit.lens_refusal_curve(refusal_mass, activations.harmful)
    lag = LagSummary(activations.n_layers, detected, logit.refusal_emergence_layer(curve))
    return ProbeAnalysis(
        activations=activations,
        probes=probes,
        probe_directions=probe_directions(activations),
        dom_directions=diff_of_means_directions(activations),
        refusal=curve,
        lag=lag,
        refusal_token_ids=tuple(refusal_ids),
        baselines=baselines,
        vs_baseline=versus,
        settings={
            "folds": folds,
            "seed": seed,
            "chat_template": activations.chat_template,
            "system_prompt": activations.params.system_prompt,
            "training_overlap": training_overlap(info, prompts),
        },
    )
