"""Per-token early exit: exit heads (how a layer's state is read out) and exit policies (when a token exits).

Policies (Schuster et al. 2022, "Confident Adaptive Language Modeling", CALM). Layer counts are 1-based:
"layer k" is the residual stream after k decoder layers, so exiting at k reads the same state as static
truncation at ``layers = k``.

- ``confidence`` (softmax response): at each k >= ``min_layers``, exit when the exit head's top-1 minus
  top-2 probability >= ``threshold``.
- ``saturation`` (state saturation): at each k >= ``min_layers``, exit when the cosine between the
  hidden states after k-1 and after k layers >= ``threshold`` (after 0 layers = the embeddings).
- Every token that has not exited earlier exits at L. A threshold above 1 is never reached (full depth);
  threshold 0 (confidence) or -1 (saturation, the lowest cosine) exits every token at ``min_layers``.

State propagation (CALM §3.2). A token that exits at k still needs keys and values in layers k+1..L, or
later tokens could not attend to it there. Its hidden state is frozen at the exit: layers k+1..L run on
it as input (so their keys/values are computed from the exited hidden state, as in CALM) and their
outputs for that token are discarded and replaced by the exited state itself. The whole layer runs for
frozen rows (a batch-wide mask per layer, no per-row branching): the compute saved is counted (mean exit
layer / L), not realised in wall-clock time. The prompt itself is always processed at full depth; the
first generated token's exit is read from the prompt's last position.

Heads: ``raw`` is the model's final norm + LM head on the layer's state (the logit lens, today's
truncation). ``tuned`` first maps the state through the tuned lens's affine translator for that layer
(``engine.tuned_lens``); at L both heads are the model's own output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from engine.models import LoadedModel
from engine.types import GenerationParams


class ExitHead(Protocol):
    """Maps the residual stream after ``layers`` decoder layers into the final layer's basis."""

    name: str
    lens_hash: str

    def translate(self, hidden: torch.Tensor, layers: int) -> torch.Tensor: ...


class RawHead:
    """The logit lens: no translation (final norm + LM head applied by the caller)."""

    name = "raw"
    lens_hash = ""

    def translate(self, hidden: torch.Tensor, layers: int) -> torch.Tensor:
        return hidden


RAW_HEAD = RawHead()


def head_logits(loaded: LoadedModel, head: ExitHead, hidden: torch.Tensor, layers: int) -> torch.Tensor:
    """The exit head's logits for states after ``layers`` layers: translator, final norm, LM head."""
    return loaded.logits_from_hidden(head.translate(hidden, layers))


def resolve_head(loaded: LoadedModel, params: GenerationParams) -> tuple[GenerationParams, ExitHead]:
    """The head ``params`` asks for, and params whose ``lens_hash`` names the lens actually used.

    A tuned head is loaded from ``data/lenses/`` by the model's content hash; a ``lens_hash`` given in
    ``params`` must match it, so a cached result never silently mixes lenses.
    """
    if params.exit_head == "raw":
        return params, RAW_HEAD
    from engine.tuned_head import LensNotFoundError, load_lens

    lens = load_lens(loaded)
    if params.lens_hash and params.lens_hash != lens.lens_hash:
        raise LensNotFoundError(
            f"the tuned lens for this model has hash {lens.lens_hash}, not {params.lens_hash}: retrain it "
            "or drop the lens hash to use the current one"
        )
    return replace(params, lens_hash=lens.lens_hash), lens


# ---------------------------------------------------------------- the exit rule, batch-wide


def _confidence(probs_logits: torch.Tensor) -> torch.Tensor:
    top = torch.softmax(probs_logits.float(), dim=-1).topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def _saturation(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return torch.cosine_similarity(before.float(), after.float(), dim=-1).clamp(-1.0, 1.0)


@dataclass
class ExitTracker:
    """Exit decisions of one token per row as it climbs the layers (tensors only: no host sync).

    ``observe(k, before, after)`` is called for k = 1..L with each row's state before and after layer
    k; rows that have not exited yet and satisfy the policy exit at k. ``exit_state`` holds each exited
    row's translated state (its logits are ``final norm + LM head`` of it).
    """

    loaded: LoadedModel
    head: ExitHead
    policy: str
    thresholds: torch.Tensor  # [rows] float32
    min_layers: int
    done: torch.Tensor  # [rows] bool
    exit_layer: torch.Tensor  # [rows] long, 0 until exited
    exit_state: torch.Tensor  # [rows, hidden]

    @classmethod
    def start(
        cls,
        loaded: LoadedModel,
        head: ExitHead,
        params: GenerationParams,
        thresholds: torch.Tensor,
        dtype: torch.dtype,
    ) -> ExitTracker:
        """A fresh token per row (``thresholds`` gives each row's threshold), nothing exited yet."""
        rows, device = thresholds.shape[0], thresholds.device
        return cls(
            loaded,
            head,
            params.exit_policy,
            thresholds,
            params.min_layers,
            torch.zeros(rows, dtype=torch.bool, device=device),
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.zeros((rows, loaded.info.hidden_size), dtype=dtype, device=device),
        )

    def observe(self, layers: int, before: torch.Tensor, after: torch.Tensor) -> None:
        if layers < min(self.min_layers, self.loaded.n_layers):
            return
        if layers >= self.loaded.n_layers:
            exits = ~self.done
            translated = after  # the model's own output: both heads agree at L
        else:
            translated = self.head.translate(after, layers)
            if self.policy == "confidence":
                score = _confidence(self.loaded.logits_from_hidden(translated))
            else:
                score = _saturation(before, after)
            exits = ~self.done & (score >= self.thresholds)
        self.exit_state = torch.where(exits[:, None], translated.to(self.exit_state.dtype), self.exit_state)
        self.exit_layer = torch.where(exits, torch.full_like(self.exit_layer, layers), self.exit_layer)
        self.done = self.done | exits


def first_token_exits(
    loaded: LoadedModel, tracker: ExitTracker, residuals: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Replay the exit rule over the prompt's last-position residuals (0..L); the first token's logits."""
    for k in range(1, loaded.n_layers + 1):
        tracker.observe(k, residuals[k - 1], residuals[k])
    return loaded.logits_from_hidden(tracker.exit_state)


def _hidden_of(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: object, hidden: torch.Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def _after_every_layer(loaded: LoadedModel, hook_for) -> Iterator[None]:
    """``hook_for(k)`` as a forward hook on layer k (1-based) of every layer, removed on exit."""
    handles = [
        layer.register_forward_hook(hook_for(index + 1), with_kwargs=True)
        for index, layer in enumerate(loaded.layers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def exit_hooks(loaded: LoadedModel, step: dict[str, ExitTracker]) -> Iterator[None]:
    """During one-token decode forwards: apply ``step["tracker"]``'s rule after every layer.

    After layer k, rows that exited earlier get their frozen state back (state propagation: the next
    layer computes their keys/values from it); the others are observed and may exit at k. After the
    last layer every row's output is its exit state, so the model's own final norm + LM head give the
    exit head's logits.
    """
    n_layers = loaded.n_layers

    def hook_for(layers: int):
        def after_layer(_module, args, kwargs, output):
            tracker = step["tracker"]
            before = args[0] if args else kwargs["hidden_states"]
            after = _hidden_of(output)
            after = torch.where(tracker.done[:, None, None], before, after)
            tracker.observe(layers, before[:, -1, :], after[:, -1, :])
            if layers == n_layers:
                after = tracker.exit_state[:, None, :].to(after.dtype)
            return _with_hidden(output, after)

        return after_layer

    with _after_every_layer(loaded, hook_for):
        yield


@contextmanager
def last_position_taps(loaded: LoadedModel, found: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record the last position of every residual during a forward (0 = embeddings, k = after k layers)."""

    def hook_for(layers: int):
        def after_layer(_module, args, kwargs, output):
            if layers == 1:
                found[0] = (args[0] if args else kwargs["hidden_states"])[:, -1, :]
            found[layers] = _hidden_of(output)[:, -1, :]

        return after_layer

    with _after_every_layer(loaded, hook_for):
        yield


@contextmanager
def translated_final_norm(loaded: LoadedModel, head: ExitHead, row_layers: object) -> Iterator[None]:
    """Static decoding with a tuned head: translate each row's state by its depth before the final norm.

    ``row_layers()`` returns the live rows' depths, deepest first, so each depth is a contiguous block
    of rows (one translator call per distinct depth, never per row).
    """
    if head.name == "raw":
        yield
        return

    def before_norm(_module, args):
        hidden = args[0]
        depths = row_layers()
        parts, start = [], 0
        for k in dict.fromkeys(depths):
            count = depths.count(k)
            parts.append(head.translate(hidden[start : start + count], k))
            start += count
        return (torch.cat(parts, dim=0).to(hidden.dtype), *args[1:])

    handle = loaded.final_norm.register_forward_pre_hook(before_norm)
    try:
        yield
    finally:
        handle.remove()
