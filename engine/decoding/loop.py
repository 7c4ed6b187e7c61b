"""The one batched decoding loop, for every exit rule (``engine.rules``).

Rows are (rule setting, prompt) pairs, setting-major: a static row's setting is its depth k (rows sorted
deepest first), a dynamic row's its threshold. The prompt runs once per prompt up to the deepest layer
any row can reach (the prompt is always processed at that full depth); its KV cache is then replicated
per layer only for the rows that can reach that layer. Each decoding step runs every layer once for all
rows that need it, and the only host sync of a static step is the stopping check.

Each generated token climbs the layers and exits where its rule says (``_Climb``); its logits are final
norm + LM head of its exit head's reading of the state it exited with. What the layers above the exit
compute for an exited token:

- a rule whose exit is fixed per row (static truncation at k): nothing. Rows deepest first make the rows
  that run layer i a prefix of the batch, known on the host (no tensor read), and no later token of the
  row goes deeper than k, so nothing there will ever read its keys and values.
- a dynamic rule (confidence, saturation): only the token's keys and values (CALM state propagation,
  §3.2). Its state is frozen at the exit; each layer above computes the keys and values of that frozen
  state so later tokens can attend to it, and skips the query, attention output and MLP. They come
  from the architecture's keys/values function (``ArchSpec.keys_values`` in ``engine.architectures``:
  input norm, key/value projections, key norm, rotary positions; bit for bit the layer's own cache
  write), or, for an architecture without one, from the layer run up to its cache write
  (``_KeysValuesOnly``). One merged cache write per layer and step covers all rows. The exit head runs
  only on rows still climbing.

  How a step splits its rows (``_Split``): reading how many rows still climb at a layer above
  ``min_layers`` is one host sync per layer, the price of tensor shapes that depend on which rows
  exited; the indices and the per-row arguments cut to them are reused by the following layers until
  another row exits. While more than ``SPLIT_BELOW`` of the rows still climb, the whole batch runs the
  layer (a layer's cost per call is largely fixed, so two passes would cost more) and the exited rows'
  outputs are dropped: their input is their frozen state, so what they write to the cache is its keys
  and values all the same. Below it the climbing rows run the layer and the exited rows only their
  keys and values; once every row has exited, the layer is keys and values only. Every way gives the
  same tokens and exit layers (``tests/test_exit_routing.py``).

Extending: a rule whose rows keep a set of layers other than a prefix (a block removed) declares it
with ``layers_kept``; the loop then needs a prefill per setting group (the prompt's states differ after
the gap) and ``_Router._run_prefix`` generalised to host-known row sets (an index instead of a slice,
still no sync). A draft-and-verify rule (self-speculative decoding) reuses ``_routed`` and the cache
handling with its own step: draft with the first k layers, verify the drafted tokens at full depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from engine.architectures import swapped
from engine.decoding.capture import captured_residuals, hidden_of, with_hidden
from engine.decoding.prompts import left_pad, position_ids_for
from engine.models import LayerWrapper, LoadedModel, layer_stack
from engine.rules import ExitRule, rule_named
from engine.types import GenerationParams

# ---------------------------------------------------------------- token choice


def row_generators(seeds: Sequence[int], device) -> list[torch.Generator]:
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        generators.append(generator)
    return generators


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return logits
    ordered, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
    drop_sorted = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # always keeps the top token
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_tokens(
    logits: torch.Tensor, params: GenerationParams, generators: list[torch.Generator] | None
) -> torch.Tensor:
    """Greedy argmax, or a categorical sample via the Gumbel-max trick with per-row noise.

    Each row draws its noise from its own generator (seeded by seed, prompt and depth), so a
    sampled completion does not depend on which other rows share its batch.
    """
    logits = logits.float()
    if params.greedy:
        return logits.argmax(dim=-1)
    scaled = top_p_filter(logits / params.temperature, params.top_p)
    noise = torch.stack(
        [torch.rand(scaled.shape[-1], generator=g, device=scaled.device) for g in generators]
    ).clamp_(1e-20, 1.0)
    return (scaled - torch.log(-torch.log(noise))).argmax(dim=-1)


# ---------------------------------------------------------------- one token per row, climbing


@dataclass(frozen=True)
class RowOutput:
    prompt_index: int
    layers: int  # the network the row may use: k (static) or L (dynamic)
    token_ids: tuple[int, ...]
    exit_layers: tuple[int, ...]  # one per token
    setting: float  # the row's rule setting: depth or threshold
    acceptance_rate: float | None = None  # self-speculative: drafted tokens accepted / drafted
    layer_compute: float | None = None  # self-speculative: layer passes run per generated token


@dataclass
class _Climb:
    """Exit decisions of one token per row as it climbs (tensors only: deciding never reads them).

    ``observe(k, rows, before, after)`` is called for k = 1..deepest with the states of ``rows`` (all
    rows when None) before and after layer k; those that satisfy the rule exit at k. ``exit_state``
    holds each exited row's state as its exit head reads it (its logits are final norm + LM head of it).
    """

    loaded: LoadedModel
    rule: ExitRule
    head: object  # engine.lenses.heads.ExitHead
    thresholds: torch.Tensor  # [rows] float32 (dynamic rules)
    fixed_exit: list[int]  # [rows] exit layer of each row (rules with a fixed exit), deepest first
    min_layers: int
    deepest: int  # the last layer any row runs
    done: torch.Tensor  # [rows] bool
    exit_layer: torch.Tensor  # [rows] long, 0 until exited
    exit_state: torch.Tensor  # [rows, hidden]

    @classmethod
    def start(cls, template: _Climb) -> _Climb:
        """A fresh token for every row of ``template``, nothing exited yet."""
        rows, device = template.thresholds.shape[0], template.thresholds.device
        return cls(
            template.loaded,
            template.rule,
            template.head,
            template.thresholds,
            template.fixed_exit,
            template.min_layers,
            template.deepest,
            torch.zeros(rows, dtype=torch.bool, device=device),
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.zeros_like(template.exit_state),
        )

    def fixed_exit_block(self, layers: int) -> tuple[int, int]:
        """Rows (a contiguous block, deepest first) whose fixed exit is ``layers``."""
        start = sum(1 for k in self.fixed_exit if k > layers)
        return start, start + sum(1 for k in self.fixed_exit if k == layers)

    def observe(self, layers: int, rows: _Split | None, before: torch.Tensor, after: torch.Tensor) -> None:
        """``rows``: None (``before``/``after`` cover every row, or a prefix for fixed exits), or the split
        of a dynamic step (they cover its climbing rows, none of which has exited yet)."""
        if self.rule.exit_is_fixed:  # ``after`` covers every row or a prefix of them: the block is in it
            start, stop = self.fixed_exit_block(layers)
            if stop > start:
                self._exit_block(layers, start, stop, self._read(after[start:stop], layers))
            return
        if layers < min(self.min_layers, self.loaded.n_layers):
            return
        if layers >= self.loaded.n_layers:
            exits = ~self.done if rows is None else None  # None: every climbing row exits
            translated = after  # the model's own output: every head agrees at L
        else:
            translated = self.head.translate(after, layers)
            logits = self.loaded.logits_from_hidden(translated) if self.rule.needs_head_logits else None
            score = self.rule.score(before, after, logits)
            exits = score >= (self.thresholds if rows is None else rows.pick(self.thresholds))
            if rows is None:
                exits = exits & ~self.done
        if rows is None:
            self._exit_rows(layers, exits, translated)
        else:
            self._exit_climbing(layers, rows.climbing, exits, translated)

    def _read(self, state: torch.Tensor, layers: int) -> torch.Tensor:
        return state if layers >= self.loaded.n_layers else self.head.translate(state, layers)

    def _exit_block(self, layers: int, start: int, stop: int, state: torch.Tensor) -> None:
        self.exit_state[start:stop] = state.to(self.exit_state.dtype)
        self.exit_layer[start:stop] = layers
        self.done[start:stop] = True

    def _exit_rows(self, layers: int, exits: torch.Tensor, state: torch.Tensor) -> None:
        self.exit_state = torch.where(exits[:, None], state.to(self.exit_state.dtype), self.exit_state)
        self.exit_layer = torch.where(exits, torch.full_like(self.exit_layer, layers), self.exit_layer)
        self.done = self.done | exits

    def _exit_climbing(
        self, layers: int, climbing: torch.Tensor, exits: torch.Tensor | None, state: torch.Tensor
    ) -> None:
        """Rows still climbing (``exits`` None: all of them). Each one's state is written whether it
        exits or not: a row still climbing overwrites it when it exits (at L at the latest)."""
        self.exit_state.index_copy_(0, climbing, state.to(self.exit_state.dtype))
        if exits is None:
            self.exit_layer.index_fill_(0, climbing, layers)
            self.done.index_fill_(0, climbing, True)
            return
        self.exit_layer.index_copy_(0, climbing, exits.long() * layers)  # 0 (not exited) or layers
        self.done.index_copy_(0, climbing, exits)


# ---------------------------------------------------------------- routing rows through the layers

# A dynamic step splits the batch at a layer (climbing rows run it, exited rows only write keys and
# values) once at most this share of its rows still climbs; above it the whole batch runs the layer.
# Measured on the CPU preset (bench/sweep.py --early-exit prints these costs): a decoder layer costs
# about 650 µs + 25 µs per row at hidden 256, keys/values alone about 140 µs + 10 µs per row, and a
# split adds about 20 small operations, so two passes pay off only below about half the rows. Where a
# layer's cost hardly depends on its rows (a large model on a GPU, weight reads dominating), only
# layers every row has left gain much.
SPLIT_BELOW = 0.5


@dataclass
class _KeysValues:
    """An exited token's keys and values at one layer, and the layer's own cache-write arguments."""

    keys: torch.Tensor
    values: torch.Tensor
    args: tuple
    kwargs: dict


class _KeysValuesReady(Exception):
    """Raised by the cache stand-in once a layer has produced an exited token's keys and values."""

    def __init__(self, written: _KeysValues) -> None:
        super().__init__()
        self.written = written


class _KeysValuesOnly:
    """Cache stand-in for exited rows where the architecture declares no keys/values function (or the
    layer is wrapped): the layer runs up to its cache write (``Cache.update``), then stops."""

    def __init__(self, cache) -> None:
        self._cache = cache

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        raise _KeysValuesReady(_KeysValues(keys, values, args, kwargs))

    def __getattr__(self, name: str):
        return getattr(self._cache, name)


class _Split:
    """One decoding step's rows split into climbing and exited at some layer. Every layer reuses it (its
    indices and the per-row arguments cut to them) until another row exits."""

    def __init__(self, done: torch.Tensor, n_climbing: int) -> None:
        self.n_rows = done.shape[0]
        self.n_climbing = n_climbing
        self.climbing_mask = ~done
        order = torch.argsort(done, stable=True)  # climbing rows, then exited rows, each in row order
        self.climbing, self.exited = order[:n_climbing], order[n_climbing:]
        # where each row sits in cat([climbing rows, exited rows]): one gather puts them back in order
        self.merge_order = order.argsort()
        self._picked: dict[tuple[int, bool], tuple[object, object]] = {}

    def pick(self, value: object, exited: bool = False) -> object:
        """``value`` with every per-row tensor (dim 0 == rows) cut to the climbing (or exited) rows;
        remembered per object (the layers of one step share their masks and positions)."""
        remembered = self._picked.get((id(value), exited))
        if remembered is not None and remembered[0] is value:
            return remembered[1]
        rows = self.exited if exited else self.climbing
        picked = _per_row(value, self.n_rows, lambda tensor: tensor.index_select(0, rows))
        self._picked[(id(value), exited)] = (value, picked)  # holding ``value`` keeps its id unique
        return picked

    def merged(self, climbing_rows: torch.Tensor, exited_rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([climbing_rows, exited_rows]).index_select(0, self.merge_order)


class _MergedWrite:
    """Cache stand-in for the climbing rows of a split batch: their keys/values and the exited rows' go
    into the cache together (one write per layer and step, all rows), the climbing rows read theirs."""

    def __init__(self, cache, split: _Split, exited: _KeysValues) -> None:
        self._cache, self._split, self._exited = cache, split, exited

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        split, exited = self._split, self._exited
        keys_out, values_out = self._cache.update(
            split.merged(keys, exited.keys), split.merged(values, exited.values), *args, **kwargs
        )
        return keys_out.index_select(0, split.climbing), values_out.index_select(0, split.climbing)

    def __getattr__(self, name: str):
        return getattr(self._cache, name)


def _with_cache(value: object, cache: object, stand_in: object) -> object:
    """``value`` (an argument of a layer) with the cache replaced by ``stand_in``."""
    if value is cache:
        return stand_in
    if isinstance(value, (tuple, list)):
        return type(value)(_with_cache(item, cache, stand_in) for item in value)
    return value


def _call_with_cache(inner, hidden, args: tuple, kwargs: dict, cache: object, stand_in: object):
    """The layer ``inner`` on ``hidden``, its cache argument replaced by ``stand_in``."""
    return inner(
        hidden,
        *_with_cache(args, cache, stand_in),
        **{key: _with_cache(value, cache, stand_in) for key, value in kwargs.items()},
    )


class _Router:
    """Shared by every layer of one decoding loop: which rows run layer k this step and what is read."""

    def __init__(self, climb: _Climb, keys_values=None) -> None:
        self.climb = climb
        self.keys_values = keys_values  # the architecture's keys/values function (None: run the layer)
        self.cache = None  # set once the model is cut
        self.decoding = False  # the prompt runs whole: every row through every kept layer
        self.row_deepest: list[int] = list(climb.fixed_exit)
        self.split: _Split | None = None  # of the current step's dynamic climb

    def run(self, layers: int, inner, hidden, args, kwargs):
        if not self.decoding:
            return inner(hidden, *args, **kwargs)
        if self.climb.rule.exit_is_fixed:
            out = self._run_prefix(layers, inner, hidden, args, kwargs)
        else:
            out = self._run_climbing(layers, inner, hidden, args, kwargs)
        if layers == self.climb.deepest:  # every row's output is the state its exit head reads
            out = with_hidden(out, self.climb.exit_state[:, None, :].to(hidden.dtype))
        return out

    def _run_prefix(self, layers, inner, hidden, args, kwargs):
        """Fixed exits: layer k runs on the rows whose depth reaches it, a prefix (rows deepest first)."""
        rows = sum(1 for k in self.row_deepest if k >= layers)
        batch = hidden.shape[0]
        if rows == 0:
            return hidden
        if rows >= batch:
            out = inner(hidden, *args, **kwargs)
            after = hidden_of(out)
        else:
            out = inner(hidden[:rows], *_prefix_rows(args, batch, rows), **_prefix_rows(kwargs, batch, rows))
            after = hidden_of(out)
            merged = torch.cat([after, hidden[rows:]], dim=0)
            out = with_hidden(out, merged)
        self.climb.observe(layers, None, hidden[:rows, -1, :], after[:rows, -1, :])
        return out

    def _run_climbing(self, layers, inner, hidden, args, kwargs):
        """Dynamic exits: rows still climbing run the layer; exited rows only write keys and values."""
        climb = self.climb
        if layers <= climb.min_layers:  # no exit before min_layers: every row still climbs
            return self._run_all(layers, inner, hidden, args, kwargs)
        split = self._split_now()
        if split is None:
            return self._run_all(layers, inner, hidden, args, kwargs)
        if split.n_climbing > SPLIT_BELOW * split.n_rows:
            return self._run_whole(layers, inner, hidden, args, kwargs, split)
        exited = self._keys_values(inner, hidden, args, kwargs, split)
        if split.n_climbing == 0:
            self.cache.update(exited.keys, exited.values, *exited.args, **exited.kwargs)
            return hidden  # every row keeps its frozen state
        stand_in = _MergedWrite(self.cache, split, exited)
        climbing_hidden = split.pick(hidden)
        climbing_kwargs = {key: split.pick(value) for key, value in kwargs.items()}
        out = _call_with_cache(
            inner, climbing_hidden, split.pick(args), climbing_kwargs, self.cache, stand_in
        )
        after = hidden_of(out)
        climb.observe(layers, split, climbing_hidden[:, -1, :], after[:, -1, :])
        # exited rows keep their frozen state
        return with_hidden(out, hidden.index_copy(0, split.climbing, after.to(hidden.dtype)))

    def _split_now(self) -> _Split | None:
        """The step's split at this layer (None: no row has exited yet). Reading how many rows still
        climb is this layer's host sync; the indices are rebuilt only when that number changed.
        Once no row climbs, none can exit again this step: the later layers skip the read (on a GPU
        each read stalls the launch queue, and those layers only write keys and values)."""
        if self.split is not None and self.split.n_climbing == 0:  # reset to None at every step
            return self.split
        done = self.climb.done
        n_climbing = _count_climbing(done)
        if n_climbing == done.shape[0]:
            return None
        if self.split is None or self.split.n_climbing != n_climbing:
            self.split = _Split(done, n_climbing)  # rows only ever exit within a step: same count, same rows
        return self.split

    def _run_whole(self, layers, inner, hidden, args, kwargs, split: _Split):
        """Most rows still climb: the whole batch runs the layer, cheaper than two passes (a layer's cost
        per call is largely fixed). An exited row's input is its frozen state, so what it writes to the
        cache is that state's keys and values; its output is dropped (it keeps the frozen state)."""
        out = inner(hidden, *args, **kwargs)
        after = hidden_of(out)
        climbing_after = after.index_select(0, split.climbing)
        self.climb.observe(layers, split, split.pick(hidden)[:, -1, :], climbing_after[:, -1, :])
        return with_hidden(out, torch.where(split.climbing_mask[:, None, None], after, hidden))

    def _run_all(self, layers, inner, hidden, args, kwargs):
        """Every row climbs (none has exited yet this step)."""
        out = inner(hidden, *args, **kwargs)
        after = hidden_of(out)
        self.climb.observe(layers, None, hidden[:, -1, :], after[:, -1, :])
        return out

    def _keys_values(self, inner, hidden, args, kwargs, split: _Split) -> _KeysValues:
        """The exited rows' keys and values at this layer: the architecture's keys/values function on
        their frozen state, or the layer itself run up to its cache write."""
        everyone = split.n_climbing == 0
        frozen = hidden if everyone else split.pick(hidden, exited=True)
        if self.keys_values is not None and not isinstance(inner, LayerWrapper):
            positions = kwargs.get("position_embeddings")
            keys, values, layer_index = self.keys_values(
                inner, frozen, positions if everyone else split.pick(positions, exited=True)
            )
            return _KeysValues(keys, values, (layer_index,), {})
        stand_in = _KeysValuesOnly(self.cache)
        picked_args = args if everyone else split.pick(args, exited=True)
        picked_kwargs = kwargs if everyone else {k: split.pick(v, exited=True) for k, v in kwargs.items()}
        try:
            _call_with_cache(inner, frozen, picked_args, picked_kwargs, self.cache, stand_in)
        except _KeysValuesReady as ready:
            return ready.written
        raise RuntimeError("the decoder layer finished without writing its keys and values to the cache")


def _count_climbing(done: torch.Tensor) -> int:
    """How many rows still climb: a host sync (the next operations' shapes depend on it)."""
    return done.shape[0] - int(done.sum())


def _prefix_rows(value: object, batch: int, rows: int) -> object:
    """Every per-row tensor (dim 0 == batch) in ``value`` cut to its first ``rows`` rows (a view)."""
    return _per_row(value, batch, lambda tensor: tensor[:rows])


def _per_row(value: object, batch: int, cut) -> object:
    """``value`` (a layer's argument, or nested tuples, lists and dicts of them) with every per-row
    tensor (dim 0 == batch) replaced by ``cut(tensor)``; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value if value.dim() == 0 or value.shape[0] != batch else cut(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_per_row(item, batch, cut) for item in value)
    if isinstance(value, dict):
        return {key: _per_row(item, batch, cut) for key, item in value.items()}
    return value


class _RoutedLayer(LayerWrapper):
    """Decoder layer k (1-based) of a decoding loop: the router decides which rows run it and how."""

    def __init__(self, inner: torch.nn.Module, layers: int, router: _Router) -> None:
        super().__init__(inner)
        self.layers_below = layers
        object.__setattr__(self, "_router", router)  # not a submodule

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self._router.run(self.layers_below, self.inner, hidden_states, args, kwargs)


@contextmanager
def _routed(loaded: LoadedModel, deepest: int, router: _Router):
    """The model cut at ``deepest`` layers (as ``truncated``), each layer under the router."""
    wrapped = [_RoutedLayer(layer, k + 1, router) for k, layer in enumerate(list(loaded.layers)[:deepest])]
    with swapped(loaded.model, layer_stack(loaded.model, loaded.spec, wrapped)):
        yield


# ---------------------------------------------------------------- the loop


def _replicate_cache(cache, n_prompts: int, row_deepest_groups: Sequence[int], device) -> None:
    """Layer i keeps one copy of each prompt's keys/values per setting group that reaches layer i."""
    for layer_index, cache_layer in enumerate(cache.layers):
        groups = sum(1 for k in row_deepest_groups if k > layer_index)
        if groups > 1:
            cache_layer.batch_select_indices(torch.arange(n_prompts, device=device).repeat(groups))


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> tuple[int, ...]:
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tuple(tokens[: position + 1])
    return tuple(tokens)


def _token_table(
    steps: Sequence[tuple[torch.Tensor, torch.Tensor]], n_rows: int, pad_id: int, device
) -> torch.Tensor:
    """Rows × steps actually taken (not × max_new_tokens): each step's values go to the rows still live."""
    out = torch.full((n_rows, len(steps)), pad_id, dtype=torch.long, device=device)
    for step, (rows, tokens) in enumerate(steps):
        out[rows, step] = tokens
    return out


def ordered_settings(rule: ExitRule, settings: Sequence[float]) -> list[float]:
    """The order of a batch's setting groups: fixed exits deepest first (rows that run layer i are then
    a prefix), thresholds as given (without repeats)."""
    unique = list(dict.fromkeys(settings))
    return sorted(unique, reverse=True) if rule.exit_is_fixed else unique


@dataclass
class _Live:
    """The rows still decoding; rows that emit EOS leave the batch (and every cache) at once."""

    origin: torch.Tensor  # index of each live row in the original batch
    mask: torch.Tensor
    positions: torch.Tensor
    generators: list[torch.Generator] | None
    router: _Router

    def keep_only(self, keep: torch.Tensor, cache) -> None:
        in_layers = [sum(1 for k in self.router.row_deepest if k > i) for i in range(len(cache.layers))]
        for cache_layer, in_layer in zip(cache.layers, in_layers, strict=True):
            cache_layer.batch_select_indices(
                keep[keep < in_layer] if in_layer < len(self.router.row_deepest) else keep
            )
        keep_list = keep.tolist()
        self.origin, self.mask, self.positions = self.origin[keep], self.mask[keep], self.positions[keep]
        self.router.row_deepest = [self.router.row_deepest[i] for i in keep_list]
        climb = self.router.climb
        climb.thresholds = climb.thresholds[keep]
        if climb.fixed_exit:
            climb.fixed_exit = [climb.fixed_exit[i] for i in keep_list]
        climb.exit_state = climb.exit_state[keep]
        if self.generators is not None:
            self.generators = [self.generators[i] for i in keep_list]


def _check_settings(rule: ExitRule, groups: Sequence[float], deepest: Sequence[int], n_layers: int) -> None:
    if not groups:
        raise ValueError("no rows to decode")
    for k in deepest:
        if not 1 <= k <= n_layers:
            raise ValueError(f"layers {k} is out of range 1..{n_layers}")
    if rule.exit_is_fixed and any(
        rule.layers_kept(g, n_layers) != tuple(range(k)) for g, k in zip(groups, deepest, strict=True)
    ):
        # A row that skips a block needs its own prefill (its prompt states differ after the gap) and
        # a router over row sets instead of prefixes: the places to extend for such a rule.
        raise NotImplementedError(f"the {rule.name} rule keeps layers other than a prefix: extend the loop")


def decode_rows(
    loaded: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    settings: Sequence[float],
    params: GenerationParams,
    row_seeds: Sequence[int] | None,
    head: object,
) -> list[RowOutput]:
    """Every prompt × every setting of ``params``'s exit rule in one prefill and one decoding loop.

    Rows come back setting-major in ``ordered_settings`` order, prompts in the given order within a
    setting. ``row_seeds`` (sampling; None when greedy) gives each row its own generator, in that row
    order. ``head`` reads an exited row's state (``engine.lenses.heads``: the caller resolves it, so the
    loop stays below the lenses).
    """
    rule = rule_named(params.exit_policy)
    n_layers, device = loaded.n_layers, loaded.device
    groups = ordered_settings(rule, settings)
    group_deepest = [rule.deepest(s, n_layers) for s in groups]
    _check_settings(rule, groups, group_deepest, n_layers)
    n_prompts = len(prompt_ids)
    n_rows = n_prompts * len(groups)
    climb = _Climb(
        loaded,
        rule,
        head,
        torch.tensor(
            [float(s) for s in groups for _ in range(n_prompts)], dtype=torch.float32, device=device
        ),
        [k for k in group_deepest for _ in range(n_prompts)] if rule.exit_is_fixed else [],
        params.min_layers,
        max(group_deepest),
        torch.zeros(n_rows, dtype=torch.bool, device=device),
        torch.zeros(n_rows, dtype=torch.long, device=device),
        torch.zeros(
            (n_rows, loaded.info.hidden_size), dtype=next(loaded.model.parameters()).dtype, device=device
        ),
    )
    generators = None if params.greedy else row_generators(row_seeds or [params.seed] * n_rows, device)
    ids, mask = left_pad(prompt_ids, loaded.tokenizer.pad_token_id, device)
    with loaded.lock, torch.inference_mode():
        from transformers import DynamicCache

        router = _Router(climb, loaded.spec.keys_values)
        router.row_deepest = list(climb.fixed_exit) if rule.exit_is_fixed else [n_layers] * n_rows
        with _routed(loaded, climb.deepest, router):
            # built for the cut model: one cache layer per layer that runs (and its config's layer types)
            router.cache = cache = DynamicCache(config=loaded.model.config)
            logits = _first_token(loaded, ids, mask, cache, climb, len(groups))
            _replicate_cache(cache, n_prompts, group_deepest, device)
            mask = mask.repeat(len(groups), 1)
            origin = torch.arange(n_rows, device=device)
            live = _Live(origin, mask, position_ids_for(mask)[:, -1:], generators, router)
            steps, step_layers = _decode(loaded, params, cache, live, logits)
    return _row_outputs(loaded, steps, step_layers, n_prompts, groups, group_deepest)


def _first_token(loaded: LoadedModel, ids, mask, cache, climb: _Climb, n_groups: int) -> torch.Tensor:
    """The prompt's prefill (every layer up to the deepest, for every prompt once) and the first token's
    logits: its exit replayed on the prompt's last position, per setting group."""
    with captured_residuals(loaded, range(climb.deepest + 1)) as residuals:
        loaded.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    for k in range(1, climb.deepest + 1):
        climb.observe(k, None, residuals[k - 1].repeat(n_groups, 1), residuals[k].repeat(n_groups, 1))
    return loaded.logits_from_hidden(climb.exit_state)


def _decode(loaded: LoadedModel, params: GenerationParams, cache, live: _Live, logits: torch.Tensor):
    """The decoding steps: (rows, tokens) and (rows, exit layers) per step, for the rows live then."""
    eos = torch.tensor(sorted(set(loaded.eos_token_ids)), device=logits.device)
    router = live.router
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    step_layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    router.decoding = True
    for step in range(params.max_new_tokens):
        chosen = choose_tokens(logits, params, live.generators)
        steps.append((live.origin, chosen))
        step_layers.append((live.origin, router.climb.exit_layer))
        finished = torch.isin(chosen, eos)
        n_finished = int(finished.sum())  # the one host sync per step: the stopping check
        if step == params.max_new_tokens - 1 or n_finished == live.origin.shape[0]:
            break
        if n_finished:
            keep = (~finished).nonzero().squeeze(1)
            live.keep_only(keep, cache)
            chosen = chosen[keep]
        live.mask = torch.cat([live.mask, live.mask.new_ones((live.mask.shape[0], 1))], dim=1)
        live.positions = live.positions + 1
        router.climb, router.split = _Climb.start(router.climb), None
        logits = loaded.model(
            input_ids=chosen[:, None],
            attention_mask=live.mask,
            position_ids=live.positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
    return steps, step_layers


def _row_outputs(
    loaded: LoadedModel, steps, step_layers, n_prompts: int, groups, group_deepest
) -> list[RowOutput]:
    n_rows, device = n_prompts * len(groups), loaded.device
    eos_ids = set(loaded.eos_token_ids)
    generated = _token_table(steps, n_rows, loaded.tokenizer.pad_token_id, device).tolist()
    layer_rows = _token_table(step_layers, n_rows, 0, device).tolist()
    rows = []
    for row, tokens in enumerate(generated):
        token_ids = _cut_at_eos(tokens, eos_ids)
        group = row // n_prompts
        exits = tuple(layer_rows[row][: len(token_ids)])
        rows.append(RowOutput(row % n_prompts, group_deepest[group], token_ids, exits, groups[group]))
    return rows
