"""What a probe analysis leaves behind: the direction file, store records and the JSON summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import lag
from engine.probes.activations import ACTIVATIONS_DIR, activations_path, save_npz
from engine.probes.analysis import ProbeAnalysis
from engine.probes.baselines import BASELINE_BOW, BASELINE_EMBEDDING, BASELINE_KIND_PREFIX

if TYPE_CHECKING:
    from engine.models import LoadedModel
    from engine.store import ProbeRecord


def save_directions(analysis: ProbeAnalysis, cache_dir: Path | str = ACTIVATIONS_DIR) -> Path:
    """Both direction sets next to the activations; probe records point here (``direction_ref``)."""
    acts = analysis.activations
    cached = activations_path(acts.model_hash, acts.set_id, acts.params, cache_dir)
    path = cached.with_name(f"{cached.stem}-directions.npz")
    save_npz(path, probe=analysis.probe_directions, diff_of_means=analysis.dom_directions)
    return path


def probe_records(analysis: ProbeAnalysis, direction_file: Path | None = None) -> list[ProbeRecord]:
    """Store rows: one "logreg" and one "diff-of-means" record per layer, details in ``extra``."""
    from engine.store import ProbeRecord

    acts = analysis.activations
    ref = direction_file.name if direction_file else None
    records = []
    for row, probe in zip(analysis.layer_rows(), analysis.probes, strict=True):
        extra = {**row, **analysis.settings, "n_prompts": len(acts.prompt_ids), "folds": probe.folds}
        for kind, accuracy, std, auroc, key in (
            ("logreg", probe.accuracy, probe.accuracy_std, probe.auroc, "probe"),
            ("diff-of-means", probe.dom_accuracy, None, None, "diff_of_means"),
        ):
            direction = {"direction_ref": f"{ref}#{key}[{probe.layer}]"} if ref else {}
            records.append(
                ProbeRecord(
                    acts.model_hash, acts.set_id, probe.layer, kind, accuracy, std, auroc, extra | direction
                )
            )
    return records + baseline_records(analysis)


def baseline_records(analysis: ProbeAnalysis) -> list[ProbeRecord]:
    """One "baseline-<name>" record per content baseline. A baseline reads no layer: it is stored at
    layer 0 (the key needs one) and marked ``layer_independent`` in ``extra``."""
    from engine.store import ProbeRecord

    acts = analysis.activations
    common = {**analysis.settings, "n_prompts": len(acts.prompt_ids), "layer_independent": True}
    return [
        ProbeRecord(
            acts.model_hash,
            acts.set_id,
            0,
            f"{BASELINE_KIND_PREFIX}{name}",
            baseline.accuracy,
            None,
            None,
            common | {"baseline": name, "per_prompt_accuracy": float(baseline.correct.mean())},
        )
        for name, baseline in analysis.baselines.items()
    ]


def summary_row(analysis: ProbeAnalysis, loaded: LoadedModel, seconds: float) -> dict[str, Any]:
    """The final object of ``probe --json``: the alignment lag and what it was computed from."""
    lag = analysis.lag
    return {
        "summary": True,
        "harm_detection_layer": lag.harm_detection_layer,
        "refusal_emergence_layer": lag.refusal_emergence_layer,
        "lag_layers": lag.lag_layers,
        "lag_percent": lag.lag_percent,
        "n_layers": lag.n_layers,
        "model": loaded.info.model_id,
        "model_hash": loaded.info.model_hash,
        "set_id": analysis.activations.set_id,
        "n_prompts": len(analysis.activations.prompt_ids),
        "n_harmful": int(analysis.activations.harmful.sum()),
        **baseline_summary(analysis),
        "refusal_tokens": list(analysis.refusal_token_ids),
        "seconds": round(seconds, 3),
        **analysis.settings,
    }


def baseline_summary(analysis: ProbeAnalysis) -> dict[str, Any]:
    """The content baselines and the harm-detection rule, as ``probe --json`` reports them."""
    accuracy = {name: b.accuracy for name, b in analysis.baselines.items()}
    best = analysis.vs_baseline[0].baseline if analysis.vs_baseline else None
    return {
        "baseline_bow_accuracy": accuracy.get(BASELINE_BOW),
        "baseline_embedding_accuracy": accuracy.get(BASELINE_EMBEDDING),
        "harm_detection_best_baseline": best,
        "harm_detection_margin": lag.HARM_DETECTION_MARGIN,
        "harm_detection_alpha": lag.HARM_DETECTION_ALPHA,
        "harm_detection_test": lag.HARM_DETECTION_TEST,
    }
