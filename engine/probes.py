"""Where a model represents "this prompt is harmful": activations, linear probes, directions, ablation.

* Activations: the last-token residual stream at every layer (``engine.lens.last_token_residuals``)
  of each prompt as the sweep asks it (``engine.sweep.model_input``: a HarmBench context above the
  request), rendered with the chat template as for generation. Cached under ``data/activations/``
  keyed by model hash + prompt-set id + chat template (+ system prompt), so probes and plots never
  recompute them.
* Probes: per layer, a standardised logistic regression harmful vs benign, scored by stratified k-fold
  cross-validation (mean accuracy, std, AUROC), and the difference-of-means direction with its own
  cross-validated accuracy (project, threshold half-way between the class means).
* Harm-detection layer: the first layer whose probe accuracy reaches ``HARM_DETECTION_ACCURACY``.
* Refusal direction: the unit diff-of-means (harmful − benign) at one layer; ``ablated_direction``
  projects it out of the residual stream at every layer, the other way to remove refusal.

Heavy libraries (torch, scikit-learn) are imported inside functions: the CLI imports this module to
register ``probe`` and should stay quick to start.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.cli import EXTENSIONS, add_model_arguments, command, load_from_args, print_json
from engine.cv import DEFAULT_FOLDS, DEFAULT_SEED, logistic_probe, stratified_folds
from engine.types import GenerationParams, Prompt, stable_hash

if TYPE_CHECKING:
    from engine.lens import LagSummary, RefusalCurve
    from engine.models import LoadedModel
    from engine.store import ProbeRecord
    from engine.types import Completion

log = logging.getLogger(__name__)

ACTIVATIONS_DIR = Path(__file__).resolve().parent.parent / "data" / "activations"
HARM_DETECTION_ACCURACY = 0.95
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


# ---------------------------------------------------------------- activations


@dataclass(frozen=True, eq=False)
class Activations:
    """Last-token residuals [n, L+1, hidden] (float32) of one prompt set under one model and template."""

    model_hash: str
    set_id: str
    params: GenerationParams  # how prompts were rendered (chat template, system prompt)
    residuals: np.ndarray
    harmful: np.ndarray  # bool [n]
    prompt_ids: tuple[str, ...]

    @property
    def n_layers(self) -> int:
        return self.residuals.shape[1] - 1

    @property
    def chat_template(self) -> bool:
        return self.params.chat_template

    def layer(self, layer: int) -> np.ndarray:
        return self.residuals[:, layer, :]


def _set_id(prompts: Sequence[Prompt]) -> str:
    try:
        from engine.datasets import prompt_set_id
    except ImportError:  # datasets is optional for this module; the same content always hashes alike
        return stable_hash(sorted([p.prompt_id, p.text, p.label] for p in prompts))
    return prompt_set_id(prompts)


def activations_path(
    model_hash: str, set_id: str, params: GenerationParams, cache_dir: Path | str = ACTIVATIONS_DIR
) -> Path:
    """Cache file of one (model, prompt set, template, system prompt)."""
    template = "chat" if params.chat_template else "raw"
    system = f"-{stable_hash(params.system_prompt, 8)}" if params.system_prompt else ""
    return Path(cache_dir) / f"{model_hash}-{set_id}-{template}{system}-v{_CACHE_FORMAT}.npz"


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write to a temp file, then rename: a crash never leaves half a cache file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _load_cached(path: Path, prompts: Sequence[Prompt]) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as cached:
            if list(cached["prompt_ids"]) != [p.prompt_id for p in prompts]:
                return None  # same content, other order: recompute rather than reorder silently
            return cached["residuals"]
    except (OSError, KeyError, ValueError) as exc:
        log.warning("ignoring unreadable activation cache %s (%s)", path, exc)
        return None


def collect_activations(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    params: GenerationParams | None = None,
    *,
    cache_dir: Path | str | None = ACTIVATIONS_DIR,
    batch_size: int | None = None,
) -> Activations:
    """Residuals of every prompt at every layer, read from the disk cache when present.

    ``cache_dir=None`` neither reads nor writes a cache.
    """
    from engine.lens import DEFAULT_BATCH_SIZE, last_token_residuals
    from engine.sweep import model_input  # contextual behaviours: the context above the request

    if not prompts:
        raise ValueError("no prompts to collect activations for")
    params = params or GenerationParams()
    set_id = _set_id(prompts)
    path = activations_path(loaded.info.model_hash, set_id, params, cache_dir) if cache_dir else None
    residuals = _load_cached(path, prompts) if path and path.exists() else None
    if residuals is None:
        texts = [model_input(p) for p in prompts]
        tensor = last_token_residuals(loaded, texts, params, batch_size=batch_size or DEFAULT_BATCH_SIZE)
        residuals = tensor.numpy()
        if path:
            _save_npz(path, residuals=residuals, prompt_ids=np.array([p.prompt_id for p in prompts]))
    return Activations(
        model_hash=loaded.info.model_hash,
        set_id=set_id,
        params=params,
        residuals=residuals,
        harmful=np.array([p.label == "harmful" for p in prompts]),
        prompt_ids=tuple(p.prompt_id for p in prompts),
    )


# ---------------------------------------------------------------- probes


@dataclass(frozen=True)
class LayerProbe:
    """Cross-validated harmful-vs-benign probes at one layer."""

    layer: int
    accuracy: float  # logistic regression, mean over folds
    accuracy_std: float
    auroc: float
    dom_accuracy: float  # difference-of-means direction with a mid-point threshold, mean over folds
    folds: int


def _dom_fold_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    mean_h, mean_b = x[train][y[train]].mean(0), x[train][~y[train]].mean(0)
    direction = mean_h - mean_b
    threshold = (mean_h + mean_b) @ direction / 2
    return float(((x[test] @ direction > threshold) == y[test]).mean())


def probe_layers(
    activations: Activations, *, folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED, C: float = 1.0
) -> list[LayerProbe]:
    """Logistic-regression and diff-of-means probes at every layer 0..L, on the same stratified folds."""
    from threadpoolctl import threadpool_limits

    y = activations.harmful
    splits = stratified_folds(y, folds, seed)  # the folds the content baselines use too
    # Tiny matrices: multi-threaded BLAS only adds contention (a fit was 50x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        return [
            _probe_layer(activations.layer(layer).astype(np.float64), y, layer, splits, C)
            for layer in range(activations.n_layers + 1)
        ]


def _probe_layer(x: np.ndarray, y: np.ndarray, layer: int, splits: list, C: float) -> LayerProbe:
    from sklearn.model_selection import cross_validate

    scores = cross_validate(logistic_probe(C), x, y, cv=splits, scoring=("accuracy", "roc_auc"))
    return LayerProbe(
        layer=layer,
        accuracy=float(scores["test_accuracy"].mean()),
        accuracy_std=float(scores["test_accuracy"].std()),
        auroc=float(scores["test_roc_auc"].mean()),
        dom_accuracy=float(np.mean([_dom_fold_accuracy(x, y, train, test) for train, test in splits])),
        folds=len(splits),
    )


def harm_detection_layer(
    probes: Sequence[LayerProbe], threshold: float = HARM_DETECTION_ACCURACY
) -> int | None:
    """First layer whose cross-validated probe accuracy reaches ``threshold`` (None if none does)."""
    return next((p.layer for p in sorted(probes, key=lambda p: p.layer) if p.accuracy >= threshold), None)


# ---------------------------------------------------------------- directions


def unit(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis; zero vectors stay zero (an undefined direction has no sign)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 1e-12)


def diff_of_means_directions(activations: Activations) -> np.ndarray:
    """Unit (mean harmful − mean benign) per layer: [L+1, hidden]."""
    r, y = activations.residuals.astype(np.float64), activations.harmful
    return unit(r[y].mean(0) - r[~y].mean(0))


def probe_directions(activations: Activations, C: float = 1.0) -> np.ndarray:
    """Unit logistic-probe weight per layer, fit on all prompts, in raw residual coordinates: [L+1, hidden].

    The pipeline's weight applies to standardised features; dividing by the scale maps it back.
    """
    from threadpoolctl import threadpool_limits

    directions = []
    with threadpool_limits(limits=1, user_api="blas"):
        for layer in range(activations.n_layers + 1):
            probe = logistic_probe(C).fit(activations.layer(layer).astype(np.float64), activations.harmful)
            scaler, regression = probe[0], probe[-1]
            directions.append(regression.coef_[0] / scaler.scale_)
    return unit(np.array(directions))


def cosine_matrix(directions: np.ndarray) -> np.ndarray:
    """Cosine similarity between every pair of rows (0 where a row is the zero vector)."""
    normed = unit(directions)
    return normed @ normed.T


def refusal_direction(activations: Activations, layer: int) -> np.ndarray:
    """The unit diff-of-means direction (harmful − benign) at ``layer``: what ablation removes."""
    if not 0 <= layer <= activations.n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{activations.n_layers}")
    direction = diff_of_means_directions(activations)[layer]
    if not np.any(direction):
        raise ValueError(f"harmful and benign prompts have the same mean at layer {layer}: no direction")
    return direction


# ---------------------------------------------------------------- what-if: ablate the refusal direction


def _project_out(hidden, direction):
    return hidden - (hidden @ direction)[..., None] * direction


@contextmanager
def ablated_direction(loaded: LoadedModel, direction: np.ndarray) -> Iterator[LoadedModel]:
    """Inside the block ``direction`` is projected out of the residual stream between layers.

    Projected: the embeddings (layer 0's input) and every decoder layer's output, at every position, so
    no layer receives it from an earlier one and the lens / head never see it. Inside one layer the MLP
    still reads what that layer's attention just wrote along it: this is weaker than orthogonalising
    the weights (Arditi et al. 2024), which would need per-architecture submodule names. Hooks are
    always removed, also when the body raises; the model's lock is held throughout.
    """
    import torch

    parameter = next(loaded.model.parameters())
    r = torch.as_tensor(unit(np.asarray(direction, dtype=np.float64)), dtype=parameter.dtype)
    r = r.to(parameter.device)
    if r.shape != (loaded.info.hidden_size,) or not bool(r.any()):
        raise ValueError(f"the direction must be a non-zero vector of size {loaded.info.hidden_size}")

    def clean_input(_module, args, kwargs):
        if args:
            return (_project_out(args[0], r), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": _project_out(kwargs["hidden_states"], r)}

    def clean_output(_module, _args, output):
        if isinstance(output, tuple):
            return (_project_out(output[0], r), *output[1:])
        return _project_out(output, r)

    with loaded.lock:
        handles = [loaded.layers[0].register_forward_pre_hook(clean_input, with_kwargs=True)]
        try:
            handles += [layer.register_forward_hook(clean_output) for layer in loaded.layers]
            yield loaded
        finally:
            for handle in handles:
                handle.remove()


def generate_ablated(
    loaded: LoadedModel,
    prompts: Sequence[Prompt | str],
    layers: Sequence[int],
    direction: np.ndarray,
    params: GenerationParams | None = None,
) -> list[Completion]:
    """``engine.generation.generate`` with ``direction`` ablated (do not store these as plain generations)."""
    from engine.generation import generate

    with ablated_direction(loaded, direction):
        return generate(loaded, prompts, layers, params)


# ---------------------------------------------------------------- the whole analysis


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
    settings: dict[str, Any] = field(default_factory=dict)

    def probe_cosines(self) -> np.ndarray:
        return cosine_matrix(self.probe_directions)

    def dom_cosines(self) -> np.ndarray:
        return cosine_matrix(self.dom_directions)

    def probe_dom_agreement(self) -> np.ndarray:
        """Per layer, cosine between the logistic probe's direction and the diff-of-means direction."""
        return np.sum(self.probe_directions * self.dom_directions, axis=-1)

    def layer_rows(self) -> list[dict[str, Any]]:
        """One plain dict per layer (JSON output, store ``extra``)."""
        agreement = self.probe_dom_agreement()
        n_layers = self.activations.n_layers
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
            }
            for p in self.probes
        ]


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

    from engine import lens

    activations = collect_activations(loaded, prompts, params, cache_dir=cache_dir)
    probes = probe_layers(activations, folds=folds, seed=seed)
    refusal_ids = lens.refusal_token_ids(loaded.tokenizer)
    mass = lens.refusal_mass(loaded, torch.from_numpy(activations.residuals), refusal_ids)
    curve = lens.lens_refusal_curve(mass, activations.harmful)
    lag = lens.LagSummary.from_layers(
        activations.n_layers, harm_detection_layer(probes), lens.refusal_emergence_layer(curve)
    )
    return ProbeAnalysis(
        activations=activations,
        probes=probes,
        probe_directions=probe_directions(activations),
        dom_directions=diff_of_means_directions(activations),
        refusal=curve,
        lag=lag,
        refusal_token_ids=refusal_ids,
        settings={
            "folds": folds,
            "seed": seed,
            "chat_template": activations.chat_template,
            "system_prompt": activations.params.system_prompt,
        },
    )


def save_directions(analysis: ProbeAnalysis, cache_dir: Path | str = ACTIVATIONS_DIR) -> Path:
    """Both direction sets next to the activations; probe records point here (``direction_ref``)."""
    acts = analysis.activations
    cached = activations_path(acts.model_hash, acts.set_id, acts.params, cache_dir)
    path = cached.with_name(f"{cached.stem}-directions.npz")
    _save_npz(path, probe=analysis.probe_directions, diff_of_means=analysis.dom_directions)
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
    return records


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
        "harm_detection_accuracy": HARM_DETECTION_ACCURACY,
        "refusal_tokens": list(analysis.refusal_token_ids),
        "seconds": round(seconds, 3),
        **analysis.settings,
    }


# ---------------------------------------------------------------- CLI: python -m engine probe


def add_probe_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "probe", help="per-layer harmful-vs-benign probes, logit-lens refusal and the alignment lag"
    )
    add_model_arguments(parser)
    parser.add_argument("--prompts", default="demo", help="built-in set name or CSV path (needs labels)")
    parser.add_argument("--db", default="data/depthscope.duckdb", help="DuckDB file to save results in")
    parser.add_argument("--no-save", action="store_true", help="do not write to the database")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="stratified CV folds")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="fold shuffling seed")
    parser.add_argument("--no-chat-template", action="store_true", help="tokenize prompts as-is")
    parser.add_argument("--system-prompt", default=None, help="system message for the chat template")
    parser.add_argument("--cache-dir", default=str(ACTIVATIONS_DIR), help="activation cache folder")
    parser.add_argument("--json", action="store_true", help="print one JSON array on stdout")


EXTENSIONS.append(add_probe_parser)


def _save_to_store(
    db: str, loaded: LoadedModel, prompts: Sequence[Prompt], name: str, records: list[ProbeRecord]
) -> int:
    from engine.store import Store

    with Store.open(db) as store:
        store.save_model(loaded.info)
        store.save_prompt_set(name, prompts, source=name, set_id=records[0].set_id)
        return store.save_probe_results(records, replace=True)


@command("probe")
def run_probe(args: argparse.Namespace) -> int:
    from engine.datasets import load_prompt_set
    from engine.store import StoreError

    if args.folds < 2:
        raise ValueError("--folds must be at least 2")
    prompts = load_prompt_set(args.prompts)
    params = GenerationParams(chat_template=not args.no_chat_template, system_prompt=args.system_prompt)
    loaded = load_from_args(args)
    began = time.perf_counter()
    analysis = analyse(loaded, prompts, params, folds=args.folds, seed=args.seed, cache_dir=args.cache_dir)
    seconds = time.perf_counter() - began
    direction_file = save_directions(analysis, args.cache_dir)
    status = 0
    if not args.no_save:
        try:
            written = _save_to_store(
                args.db, loaded, prompts, args.prompts, probe_records(analysis, direction_file)
            )
            log.info("saved %d probe results to %s", written, args.db)
        except StoreError as exc:  # the results are still printed; the exit status says they were not saved
            log.error("could not save probe results to %s: %s", args.db, exc)
            status = 1
    rows = analysis.layer_rows()
    summary = summary_row(analysis, loaded, seconds)
    if args.json:
        print_json([*rows, summary])
    else:
        print_probe_table(rows, summary)
    return status


def print_probe_table(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(
        f"{'layer':>5} {'depth':>6} {'acc':>6} {'±':>5} {'auroc':>6} {'dom':>6} {'refusal h/b':>13} {'p':>7}"
    )
    for r in rows:
        refusal = f"{r['refusal_mass_harmful']:.3f}/{r['refusal_mass_benign']:.3f}"
        print(
            f"{r['layer']:>5} {r['depth_percent']:>5.1f}% {r['accuracy']:>6.3f} {r['accuracy_std']:>5.3f} "
            f"{r['auroc']:>6.3f} {r['dom_accuracy']:>6.3f} {refusal:>13} {r['refusal_p_value']:>7.3g}"
        )
    lag = (
        "n/a"
        if summary["lag_layers"] is None
        else f"{summary['lag_layers']} layers ({summary['lag_percent']:.1f}%)"
    )
    print(
        f"harm detection layer: {summary['harm_detection_layer']}  ·  refusal emergence layer: "
        f"{summary['refusal_emergence_layer']}  ·  alignment lag: {lag}"
    )
