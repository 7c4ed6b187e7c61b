"""Self-speculative decoding (LayerSkip-style): the first k layers draft, the full model verifies.

Each step, every live row drafts ``draft_tokens`` tokens greedily with the first ``draft_layers`` layers
(+ final norm + head), then the full model runs once on the last accepted token and the drafts. A row
keeps the drafts up to its first disagreement with the full model and then the full model's own token,
so its output is exactly the full model's greedy output, token for token, whatever the draft says.

Batched without per-row loops: rows accept different numbers of drafts, so after each verification
every row's rejected cache entries are moved to the left of its KV cache and masked out, like left
padding. Every layer (sliding-window ones too) then sees each row's real tokens contiguous at the right,
and positions are passed explicitly. The draft's cache entries (layers 1..k) are dropped before the
verification recomputes them: the compute counted per token is what actually ran (draft + verify).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.decoding.loop import RowOutput, _cut_at_eos
from engine.decoding.prompts import left_pad, position_ids_for
from engine.models import LoadedModel, truncated
from engine.types import GenerationParams, check_draft_layers


@dataclass
class RowTally:
    """One row's generated tokens (EOS not yet cut) and what it cost."""

    tokens: list[int]
    drafted: int = 0
    accepted: int = 0
    passes: int = 0  # decoder-layer passes spent on this row's generated tokens
    done: bool = False


def _forward(
    loaded: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, keep=1
):
    """Logits of the last ``keep`` positions (the head on the whole prompt would be wasted work)."""
    return loaded.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=keep,
    ).logits


def _draft(loaded, cache, token, mask, positions, params) -> torch.Tensor:
    """``draft_tokens`` greedy tokens [rows, n] from the first ``draft_layers`` layers; their cache
    entries are dropped again (the verification recomputes them)."""
    drafts = []
    current, grown = token, mask
    with truncated(loaded, params.draft_layers):
        for step in range(params.draft_tokens):
            grown = torch.cat([grown, grown.new_ones((grown.shape[0], 1))], dim=1)
            logits = _forward(loaded, current[:, None], grown, positions + step, cache)
            current = logits[:, -1].argmax(dim=-1)
            drafts.append(current)
    for layer in cache.layers[: params.draft_layers]:
        layer.crop(-params.draft_tokens)
    return torch.stack(drafts, dim=1)


def _pack_left(cache, mask: torch.Tensor) -> torch.Tensor:
    """Move every row's masked-out cache entries to its left (stable), so its real tokens are contiguous
    at the right, as with left padding; returns the matching mask."""
    order = torch.sort(mask, dim=1, stable=True).indices
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        index = order[:, None, :, None].expand_as(layer.keys)
        layer.keys = layer.keys.gather(2, index)
        layer.values = layer.values.gather(2, index)
    return mask.gather(1, order)


def speculate(
    loaded: LoadedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    params: GenerationParams,
) -> list[RowTally]:
    """Greedy self-speculative decoding of a left-padded batch (``positions``: the prompt's position
    ids); one tally per row, all rows at L layers."""
    from transformers import DynamicCache

    n_layers, device = loaded.n_layers, loaded.device
    check_draft_layers(params, n_layers)
    n, k = params.draft_tokens, params.draft_layers
    eos_ids = set(loaded.eos_token_ids)
    tallies = [RowTally([]) for _ in range(ids.shape[0])]
    with loaded.lock, torch.inference_mode():
        cache = DynamicCache()  # one full-size layer per decoder layer: rows are re-packed after each step
        logits = _forward(loaded, ids, mask, positions, cache)[:, -1]
        token = logits.argmax(dim=-1)  # the first token: the prompt runs at full depth
        positions = positions[:, -1:] + 1
        origin = list(range(ids.shape[0]))
        for row, first in zip(origin, token.tolist(), strict=True):
            tallies[row].tokens.append(first)
            tallies[row].passes += n_layers
            tallies[row].done = first in eos_ids or params.max_new_tokens == 1
        while True:
            keep = [i for i, row in enumerate(origin) if not tallies[row].done]
            if not keep:
                break
            if len(keep) < len(origin):
                index = torch.tensor(keep, device=device)
                for layer in cache.layers:
                    layer.batch_select_indices(index)
                token, mask, positions = token[index], mask[index], positions[index]
                origin = [origin[i] for i in keep]
            drafts = _draft(loaded, cache, token, mask, positions, params)
            block = torch.cat([token[:, None], drafts], dim=1)  # the last accepted token, then the drafts
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], n + 1))], dim=1)
            target = _forward(
                loaded, block, mask, positions + torch.arange(n + 1, device=device), cache, n + 1
            )
            target = target.argmax(dim=-1)  # the full model's next token after each prefix of the block
            accepted = (drafts == target[:, :n]).long().cumprod(dim=1).sum(dim=1)
            valid = torch.arange(n + 1, device=device)[None, :] <= accepted[:, None]
            mask[:, -(n + 1) :] = valid.long()
            mask = _pack_left(cache, mask)
            token = target.gather(1, accepted[:, None]).squeeze(1)
            positions = positions + accepted[:, None] + 1
            for row, count, emitted in zip(origin, accepted.tolist(), target.tolist(), strict=True):
                tally = tallies[row]
                tally.drafted += n
                tally.accepted += count
                tally.passes += n * k + (n + 1) * n_layers
                new = emitted[: count + 1][: params.max_new_tokens - len(tally.tokens)]
                tally.tokens.extend(new)
                tally.done = len(tally.tokens) >= params.max_new_tokens or any(t in eos_ids for t in new)
    return tallies


def speculative_rows(
    loaded: LoadedModel, prompt_ids: Sequence[Sequence[int]], params: GenerationParams
) -> list[RowOutput]:
    """Greedy self-speculative decoding for all prompts in one batch: every token is the full model's,
    each row records its drafts' acceptance rate and the layer passes spent per generated token."""
    ids, mask = left_pad(prompt_ids, loaded.tokenizer.pad_token_id, loaded.device)
    eos_ids, n_layers = set(loaded.eos_token_ids), loaded.n_layers
    rows = []
    for index, tally in enumerate(speculate(loaded, ids, mask, position_ids_for(mask), params)):
        token_ids = _cut_at_eos(tally.tokens, eos_ids)
        rows.append(
            RowOutput(
                index,
                n_layers,
                token_ids,
                (n_layers,) * len(token_ids),  # every token is the full model's
                float(params.draft_layers),
                acceptance_rate=tally.accepted / tally.drafted if tally.drafted else None,
                layer_compute=tally.passes / max(1, len(token_ids)),
            )
        )
    return rows
