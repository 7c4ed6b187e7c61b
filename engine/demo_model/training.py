"""Training the demo model in two stages (see ``engine.demo_model``): every layer learns to comply with
early-exit losses, then only the refusal band (the last layers) learns to refuse, at each of its exits.

Layers, final norm and head are found through ``engine.architectures`` (the same table truncation
uses), and the upper layers are trained alone by swapping the layer list with ``swapped``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from engine.architectures import resolve, spec_for, swapped
from engine.demo_model.scales import DemoScale
from engine.demo_model.tokenizer import EncodedExamples

if TYPE_CHECKING:  # torch and transformers load lazily: the CLI imports this package at start-up
    import torch
    from transformers import LlamaForCausalLM


def new_model(scale: DemoScale, seed: int) -> LlamaForCausalLM:
    """A fresh Llama with tied embeddings; ids 0 = <|endoftext|>, 2 = <|im_end|> (EOS and padding)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=scale.vocab_size,
        hidden_size=scale.hidden_size,
        intermediate_size=scale.intermediate_size,
        num_hidden_layers=scale.n_layers,
        num_attention_heads=scale.n_heads,
        num_key_value_heads=scale.n_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    return model


def prompt_budget(model: LlamaForCausalLM) -> int:
    """Prompt tokens a default sweep leaves beside its answer: long training prompts are cut to it too."""
    from engine.types import GenerationParams

    return model.config.max_position_embeddings - GenerationParams().max_new_tokens


def exit_weights(n_layers: int) -> tuple[float, ...]:
    """Early-exit loss weights, growing with depth (shallow exits cannot do much; deep ones matter)."""
    total = sum(range(1, n_layers + 1))
    return tuple(k / total for k in range(1, n_layers + 1))


def decoder_layers(model: LlamaForCausalLM) -> torch.nn.ModuleList:
    return resolve(model, spec_for(model.config.model_type).layers)


def final_norm(model: LlamaForCausalLM) -> torch.nn.Module:
    return resolve(model, spec_for(model.config.model_type).final_norm)


@contextmanager
def only_layers(model: LlamaForCausalLM, layers: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Run ``layers`` alone (fed hidden states instead of token ids); the full list comes back after."""
    from torch import nn

    with swapped(model, {spec_for(model.config.model_type).layers: nn.ModuleList(layers)}):
        yield


def _rows(data: EncodedExamples, rows: torch.Tensor) -> EncodedExamples:
    width = int(data.attention_mask[rows].sum(dim=1).max())  # drop the all-padding tail
    return EncodedExamples(
        data.input_ids[rows, :width],
        data.labels[rows, :width],
        data.attention_mask[rows, :width],
        data.intent[rows],
    )


def bucketed_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator:
    """Endless batches of row indices of similar length (little padding: CPU time is the budget)."""
    import torch

    while True:
        for pool in torch.randperm(len(lengths), generator=generator).split(batch_size * 16):
            pool = pool[torch.argsort(lengths[pool], stable=True)]
            batches = pool.split(batch_size)
            for i in torch.randperm(len(batches), generator=generator).tolist():
                yield batches[i]


def _answer_loss(
    model: LlamaForCausalLM, hidden: torch.Tensor, labels: torch.Tensor, normed: bool
) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens only, through the final norm and the shared head."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    scored = targets != -100
    states = hidden[:, :-1][scored]
    if not normed:
        states = final_norm(model)(states)
    return F.cross_entropy(model.get_output_embeddings()(states).float(), targets[scored])


def hidden_states(model: LlamaForCausalLM, batch: EncodedExamples) -> tuple[torch.Tensor, ...]:
    """The residual stream after the embeddings and after each layer (the last one final-normed, as HF
    returns it): what the probes read, and what each exit reads."""
    return model.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
    ).hidden_states


def early_exit_losses(
    model: LlamaForCausalLM, batch: EncodedExamples, states: Sequence[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """The loss at every exit k = 1..L: output of layer k -> final norm -> LM head.

    That is exactly the network ``engine.models.truncated(loaded, k)`` runs. HF's last hidden
    state is already final-normed; the others get the final norm here.
    """
    states = states if states is not None else hidden_states(model, batch)
    n_layers = model.config.num_hidden_layers
    return [
        _answer_loss(model, states[k], batch.labels, normed=k == n_layers) for k in range(1, n_layers + 1)
    ]


def last_prompt_positions(labels: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the prompt's last token (the one the probes read): just before the
    first answer token."""
    return (labels != -100).int().argmax(dim=1) - 1


def intent_loss(readout: torch.nn.Linear, state: torch.Tensor, batch: EncodedExamples) -> torch.Tensor:
    """Logistic loss of a linear harmful-vs-benign read-out of ``state`` (one layer's residual stream)
    at each prompt's last token; rows of neither intent do not count."""
    import torch
    import torch.nn.functional as F

    known = batch.intent >= 0
    positions = last_prompt_positions(batch.labels)[known]
    rows = torch.arange(len(batch.intent))[known]
    logits = readout(state[rows, positions]).squeeze(-1)
    return F.binary_cross_entropy_with_logits(logits.float(), batch.intent[known].float())


def layer_inputs(
    model: LlamaForCausalLM, data: EncodedExamples, layer: int, batch_size: int = 64
) -> torch.Tensor:
    """The residual stream entering decoder layer ``layer`` (0-based) for every example."""
    import torch

    chunks = []
    with torch.no_grad():
        for rows in torch.arange(len(data.input_ids)).split(batch_size):
            out = model.base_model(
                input_ids=data.input_ids[rows],
                attention_mask=data.attention_mask[rows],
                output_hidden_states=True,
            )
            chunks.append(out.hidden_states[layer])
    return torch.cat(chunks)


def _lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 %, then cosine decay to 10 % of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_steps(
    params: Sequence[torch.nn.Parameter],
    steps: int,
    lr: float,
    loss_of_batch: Callable[[int], torch.Tensor],
    on_step: Callable[[int, float], None],
) -> float:
    """AdamW with warm-up + cosine decay and gradient clipping; returns the last step's loss."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    loss_value = float("nan")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        loss = loss_of_batch(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        on_step(step, loss_value)
    return loss_value


def train_to_comply(
    model: LlamaForCausalLM,
    data: EncodedExamples,
    contrast: EncodedExamples,
    size: DemoScale,
    generator: torch.Generator,
    on_step: Callable[[int, float], None],
) -> float:
    """Stage 1: every parameter, a weighted sum of the losses at every exit, plus the intent loss.

    Each step sees a batch of the main corpus and a batch of the contrast pairs. The intent loss
    trains a linear harmful-vs-benign read-out of layer ``size.intent_layer``'s output at the prompt's
    last token (discarded after training): from that layer on, the request's intent is a direction in
    the residual stream. The contrast pairs, whose words do not give their intent away, are learned
    by the layers (:func:`contrast_loss`), never by the token embeddings, so that the prompt's words
    alone still cannot tell the twins apart: the probes find harm detected inside the network, and
    refusal is added only in the band, above it.
    """
    import torch

    batches = bucketed_batches(data.attention_mask.sum(dim=1), size.batch_size, generator)
    pairs = contrast_batches(contrast, size, generator)
    weights = exit_weights(size.n_layers)
    readout = torch.nn.Linear(size.hidden_size, 1)

    def main_loss(batch: EncodedExamples) -> torch.Tensor:
        states = hidden_states(model, batch)
        losses = early_exit_losses(model, batch, states)
        exits = sum(w * loss for w, loss in zip(weights, losses, strict=True))
        return exits + size.intent_weight * intent_loss(readout, states[size.intent_layer], batch)

    def loss_of_batch(_step: int):
        main = main_loss(_rows(data, next(batches)))  # the main batch first: both draw on ``generator``
        if pairs is None:
            return main
        return main + contrast_loss(model, _rows(contrast, next(pairs)), readout, size, weights)

    model.train()
    try:
        parameters = list(model.parameters()) + list(readout.parameters())
        return train_steps(parameters, size.stage1_steps, size.stage1_lr, loss_of_batch, on_step)
    finally:
        model.eval()


def contrast_batches(
    contrast: EncodedExamples, size: DemoScale, generator: torch.Generator
) -> Iterator | None:
    """Endless batches of contrast pairs (None when the scale trains none)."""
    if not size.contrast_batch_size:
        return None
    return bucketed_batches(contrast.attention_mask.sum(dim=1), size.contrast_batch_size, generator)


def contrast_loss(
    model: LlamaForCausalLM,
    batch: EncodedExamples,
    readout: torch.nn.Linear,
    size: DemoScale,
    weights: Sequence[float],
) -> torch.Tensor:
    """A batch of contrast pairs in stage 1: the intent read-out's loss, and the answer loss at the
    exits from the intent layer on.

    The token embeddings are fed detached: trained on the pairs, they learned each pair's telling
    word ("neighbour" harmful, "Python" benign) and the mean-embedding baseline read intent from the
    words alone (0.88-0.96), leaving no layer anything to add. The exits below the intent layer are
    not trained on the pairs: nothing asks the first layers to tell the twins apart.
    """
    embeddings = model.get_input_embeddings()(batch.input_ids).detach()
    states = model.base_model(
        inputs_embeds=embeddings, attention_mask=batch.attention_mask, output_hidden_states=True
    ).hidden_states
    first = size.intent_layer
    intent = size.intent_weight * intent_loss(readout, states[first], batch)
    losses = early_exit_losses(model, batch, states)[first - 1 :]
    return sum(w * loss for w, loss in zip(weights[first - 1 :], losses, strict=True)) + intent


def band_exit_loss(model: LlamaForCausalLM, hidden: torch.Tensor, batch: EncodedExamples) -> torch.Tensor:
    """The mean answer loss over every exit of the refusal band, run alone on ``hidden`` (its input).

    An exit loss at each band layer, not only at the last: truncated inside the band the model must
    still refuse cleanly, or a cut there reads as broken half-refusals ("I'm'm'm sorry") instead of the
    documented boundary. HF's last hidden state is already final-normed; the others get the norm here.
    """
    out = model.base_model(
        inputs_embeds=hidden, attention_mask=batch.attention_mask, output_hidden_states=True
    )
    exits = out.hidden_states[1:]
    losses = [
        _answer_loss(model, state, batch.labels, normed=index == len(exits) - 1)
        for index, state in enumerate(exits)
    ]
    return sum(losses) / len(losses)


def train_to_refuse(
    model: LlamaForCausalLM,
    data: EncodedExamples,
    contrast: EncodedExamples,
    size: DemoScale,
    generator: torch.Generator,
    on_step: Callable[[int, float], None],
) -> float:
    """Stage 2: only the refusal band (the last ``size.refusal_layers`` layers) learns, with a loss at
    each of its exits; everything below is frozen. Each step sees a batch of the main corpus and one
    of the contrast pairs (refuse the harmful one, answer its benign twin).

    Frozen layers give the same output every step, so their output is computed once and the band
    is trained on it alone (a quarter of the compute at 8 layers).
    """
    first = size.n_layers - size.refusal_layers
    inputs, contrast_inputs = layer_inputs(model, data, first), layer_inputs(model, contrast, first)
    upper = list(decoder_layers(model))[first:]
    trainable = [p for layer in upper for p in layer.parameters()]
    batches = bucketed_batches(data.attention_mask.sum(dim=1), size.batch_size, generator)
    pairs = contrast_batches(contrast, size, generator)

    def band_loss(examples: EncodedExamples, band_inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        batch = _rows(examples, rows)
        return band_exit_loss(model, band_inputs[rows, : batch.input_ids.shape[1]], batch)

    def loss_of_batch(_step: int):
        main = band_loss(data, inputs, next(batches))
        return main if pairs is None else main + band_loss(contrast, contrast_inputs, next(pairs))

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    model.train()
    try:
        with only_layers(model, upper):
            return train_steps(trainable, size.stage2_steps, size.stage2_lr, loss_of_batch, on_step)
    finally:
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(True)


@contextmanager
def reproducible_torch() -> Iterator[None]:
    """Deterministic kernels on one CPU thread while building; the caller's settings come back after.

    One thread makes the weights independent of the machine's core count, and it is faster where
    the CPU is shared: a 2-thread OpenMP team whose second core is busy elsewhere (the dashboard's
    own server, say) spins at every barrier: training steps ran 6-40x slower than on one thread.
    """
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
