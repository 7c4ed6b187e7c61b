"""The activation cache: last-token residuals of a prompt set at every layer, computed once per
(model, prompt set, chat template, system prompt) and kept under ``data/activations/``.

Each prompt is read as the sweep asks it (``engine.types.model_input``: a HarmBench context above the
request), rendered with the chat template as for generation.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.datasets import prompt_set_id
from engine.errors import UserInputError
from engine.paths import ACTIVATIONS_DIR
from engine.types import GenerationParams, Prompt, model_input, stable_hash

if TYPE_CHECKING:
    from engine.models import LoadedModel

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # bump when the cached arrays change meaning


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


def activations_path(
    model_hash: str, set_id: str, params: GenerationParams, cache_dir: Path | str = ACTIVATIONS_DIR
) -> Path:
    """Cache file of one (model, prompt set, template, system prompt, context budget).

    Prompts are fitted to the context beside ``max_new_tokens`` as generation fits them, so a
    non-default ``max_new_tokens`` (which may cut a long prompt differently) gets files of its own;
    the default keeps the names files had before prompts were fitted."""
    template = "chat" if params.chat_template else "raw"
    system = f"-{stable_hash(params.system_prompt, 8)}" if params.system_prompt else ""
    new_tokens = params.max_new_tokens
    budget = "" if new_tokens == GenerationParams().max_new_tokens else f"-new{new_tokens}"
    return Path(cache_dir) / f"{model_hash}-{set_id}-{template}{system}{budget}-v{_CACHE_FORMAT}.npz"


def save_npz(path: Path, **arrays: np.ndarray) -> None:
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


def activations_of(
    model_hash: str, prompts: Sequence[Prompt], params: GenerationParams, residuals: np.ndarray
) -> Activations:
    """The record of ``prompts``' residuals: set id, labels and prompt ids read from the prompts."""
    return Activations(
        model_hash=model_hash,
        set_id=prompt_set_id(prompts),
        params=params,
        residuals=residuals,
        harmful=np.array([p.label == "harmful" for p in prompts]),
        prompt_ids=tuple(p.prompt_id for p in prompts),
    )


def save_residuals(path: Path, residuals: np.ndarray, prompts: Sequence[Prompt]) -> None:
    """Write one cache file: the residuals with the prompt ids they belong to (checked on reading)."""
    save_npz(path, residuals=residuals, prompt_ids=np.array([p.prompt_id for p in prompts]))


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
    from engine.lenses import logit  # torch: only when activations are computed

    if not prompts:
        raise UserInputError("no prompts to collect activations for")
    params = params or GenerationParams()
    path = (
        activations_path(loaded.info.model_hash, prompt_set_id(prompts), params, cache_dir)
        if cache_dir
        else None
    )
    residuals = _load_cached(path, prompts) if path and path.exists() else None
    if residuals is None:
        texts = [model_input(p) for p in prompts]
        batch = batch_size or logit.DEFAULT_BATCH_SIZE
        residuals = logit.last_token_residuals(loaded, texts, params, batch_size=batch).numpy()
        if path:
            save_residuals(path, residuals, prompts)
    return activations_of(loaded.info.model_hash, prompts, params, residuals)


def mean_input_embeddings(
    loaded: LoadedModel, texts: Sequence[str], *, batch_size: int | None = None
) -> np.ndarray:
    """float32 [n, hidden]: each text's input-token embeddings averaged over its tokens, read from the
    model's input-embedding matrix on the bare text (no chat template, no special tokens): the content
    the mean-embedding baseline sees. Batched: padded ids, a masked mean per row."""
    import torch

    from engine.lenses import logit

    table = loaded.model.get_input_embeddings()
    encoded = [list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    if empty := [i for i, ids in enumerate(encoded) if not ids]:
        raise UserInputError(f"prompts {empty} have no tokens: the embedding baseline needs some text")
    batch = batch_size or logit.DEFAULT_BATCH_SIZE
    out = np.zeros((len(texts), table.weight.shape[1]), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(encoded), batch):
            chunk = encoded[start : start + batch]
            ids = torch.zeros((len(chunk), max(map(len, chunk))), dtype=torch.long)
            mask = torch.zeros(ids.shape, dtype=torch.float32)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1.0
            mask = mask.to(table.weight.device)
            embedded = table(ids.to(table.weight.device)).float() * mask[..., None]
            out[start : start + len(chunk)] = (embedded.sum(1) / mask.sum(1, keepdim=True)).cpu().numpy()
    return out
