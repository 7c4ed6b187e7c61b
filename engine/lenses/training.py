"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned
Lens"): one affine translator per layer, then the model's own final norm + LM head.

Translator k (k = 1..L-1, the residual after k layers) is ``h + W_k h + b_k`` with ``W_k``, ``b_k``
initialised at zero (the identity: the tuned head starts as the raw logit lens). Training minimises, over
benign text, the mean over layers of KL(final-layer next-token distribution ‖ translated layer k's
distribution); the model itself stays frozen. At k = L the translator is the identity (the model's
output). Written with torch alone (the ``tuned-lens`` package pins old libraries).

Training text: the prompts rendered as for generation, each followed by the model's own greedy
full-depth completion (so the lens sees the assistant text that exits will read). Prompts are split
into train and held-out sets (``split_texts``) before anything is computed; the held-out KL per layer
for the tuned and raw heads goes into the sidecar (``engine.lenses.files``). Generating the answers
sits above this package (``engine.usecases.train_tuned_lens`` does it and calls ``train_lens`` with
the token sequences), so the lenses stay below generation, which reads exits through them.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from engine.decoding.capture import captured_residuals
from engine.decoding.prompts import left_pad, position_ids_for
from engine.errors import UserInputError
from engine.lenses.files import lens_sidecar_path, lens_weights_path
from engine.lenses.tuned import TunedLens
from engine.models import LoadedModel

DEFAULT_STEPS = 300
DEFAULT_BATCH_TOKENS = 32
DEFAULT_LR = 1e-3
DEFAULT_GENERATE_TOKENS = 48
HELDOUT_FRACTION = 0.2
MAX_HELDOUT_TOKENS = 256  # evaluation runs the LM head L times per token: keep it to a minute on CPU

Progress = Callable[[str, int, int, float | None], None]  # (stage, done, total, current loss)


# ---------------------------------------------------------------- training data


def collect_states(
    loaded: LoadedModel, sequences: Sequence[Sequence[int]], batch_size: int = 8
) -> torch.Tensor:
    """Residuals after 1..L layers at every real position: float32 [tokens, L, hidden] on CPU.

    Positions shared by every sequence (a common template prefix has identical states) are kept once.
    """
    common = _common_prefix(sequences)
    chunks = []
    with loaded.lock, torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            ids, mask = left_pad(batch, loaded.tokenizer.pad_token_id, loaded.device)
            with captured_residuals(loaded, range(1, loaded.n_layers + 1), positions=None) as found:
                loaded.model(
                    input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask), logits_to_keep=1
                )
            states = torch.stack([found[k] for k in range(1, loaded.n_layers + 1)], dim=2).float().cpu()
            for row, seq in enumerate(batch):
                skip = 0 if start + row == 0 else common
                chunks.append(states[row, ids.shape[1] - len(seq) + skip :])
    return torch.cat(chunks, dim=0)


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    if len(sequences) < 2:
        return 0
    length = min(map(len, sequences)) - 1  # keep at least each sequence's last position
    for position in range(length):
        if len({seq[position] for seq in sequences}) > 1:
            return position
    return length


# ---------------------------------------------------------------- the loss and its measurement


def _kl_from_logits(target_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) per row, in nats."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


def layer_kl(
    loaded: LoadedModel, lens: TunedLens | None, states: torch.Tensor, chunk: int = 64
) -> list[float]:
    """Mean KL(final ‖ head at layer k) over the token states, k = 1..L (raw head when lens is None)."""
    n_tokens, n_layers = states.shape[0], states.shape[1]
    totals = torch.zeros(n_layers, dtype=torch.float64)
    device = loaded.device
    with torch.inference_mode():
        for start in range(0, n_tokens, chunk):
            block = states[start : start + chunk].to(device)
            target = torch.log_softmax(loaded.logits_from_hidden(block[:, -1]).float(), dim=-1)
            for k in range(1, n_layers + 1):
                hidden = block[:, k - 1]
                if lens is not None:
                    hidden = lens.translate(hidden, k)
                totals[k - 1] += (
                    _kl_from_logits(target, loaded.logits_from_hidden(hidden)).sum().double().cpu()
                )
    return [float(v) for v in totals / max(1, n_tokens)]


def _training_loss(loaded: LoadedModel, lens: TunedLens, batch: torch.Tensor) -> torch.Tensor:
    """Mean over layers 1..L-1 and tokens of KL(final ‖ tuned head); one LM-head call for all layers."""
    with torch.no_grad():
        target = torch.log_softmax(loaded.logits_from_hidden(batch[:, -1]).float(), dim=-1)
    inner = batch[:, :-1].transpose(0, 1)  # [L-1, B, H]
    translated = lens.translate_all(inner)
    logits = loaded.logits_from_hidden(translated.reshape(-1, translated.shape[-1]))
    repeated = target.repeat(inner.shape[0], 1)
    return _kl_from_logits(repeated, logits).mean()


# ---------------------------------------------------------------- training


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Only the translators learn: no gradient is built for the model's own weights (restored after)."""
    saved = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in saved:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)


@dataclass(frozen=True)
class TrainedLens:
    lens: TunedLens
    report: dict  # the sidecar: hashes, corpus, steps, held-out KL per layer (tuned and raw)


def split_texts(texts: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split into training and held-out texts (at least one held out)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_heldout = max(1, round(len(texts) * heldout_fraction))
    if len(texts) < 2:
        raise UserInputError("a tuned lens needs at least 2 texts: some to train on, some held out")
    heldout = [texts[i] for i in order[:n_heldout]]
    return [texts[i] for i in order[n_heldout:]], heldout


def train_lens(
    loaded: LoadedModel,
    train_sequences: Sequence[Sequence[int]],
    heldout_sequences: Sequence[Sequence[int]],
    *,
    steps: int = DEFAULT_STEPS,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    lr: float = DEFAULT_LR,
    max_heldout_tokens: int = MAX_HELDOUT_TOKENS,
    seed: int = 0,
    corpus: str = "benign",
    generate_tokens: int = DEFAULT_GENERATE_TOKENS,
    on_progress: Progress | None = None,
) -> TrainedLens:
    """Train a tuned lens for ``loaded`` on token sequences (one per text: the prompt and the model's
    answer); report held-out KL. ``corpus`` and ``generate_tokens`` (answer tokens per text) are
    recorded in the sidecar.

    ``on_progress(stage, done, total, loss)`` is called with stage "train" (each step, with the
    training loss) and "evaluate".
    """
    began = time.perf_counter()
    report_progress = on_progress or (lambda *_args: None)
    train_states = collect_states(loaded, train_sequences)
    heldout_states = collect_states(loaded, heldout_sequences)
    if heldout_states.shape[0] > max_heldout_tokens:  # a seeded random subset of held-out positions
        pick = torch.randperm(heldout_states.shape[0], generator=torch.Generator().manual_seed(seed))
        heldout_states = heldout_states[pick[:max_heldout_tokens].sort().values]

    lens = TunedLens(loaded.n_layers, loaded.info.hidden_size).to(loaded.device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss_value = None
    with loaded.lock, _frozen(loaded.model):
        for step in range(steps):
            index = torch.randint(train_states.shape[0], (batch_tokens,), generator=generator)
            batch = train_states[index].to(loaded.device)
            loss = _training_loss(loaded, lens, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            report_progress("train", step + 1, steps, loss_value)
        report_progress("evaluate", 0, 2, loss_value)
        kl_raw = layer_kl(loaded, None, heldout_states)
        report_progress("evaluate", 1, 2, loss_value)
        kl_tuned = layer_kl(loaded, lens, heldout_states)
        report_progress("evaluate", 2, 2, loss_value)
    lens.eval()
    report = {
        "model_hash": loaded.info.model_hash,
        "model_id": loaded.info.model_id,
        "n_layers": loaded.n_layers,
        "lens_hash": lens.lens_hash,
        "corpus": corpus,
        "n_texts_train": len(train_sequences),
        "n_texts_heldout": len(heldout_sequences),
        "generated_tokens_per_text": generate_tokens,
        "train_tokens": int(train_states.shape[0]),
        "heldout_tokens": int(heldout_states.shape[0]),
        "steps": steps,
        "batch_tokens": batch_tokens,
        "lr": lr,
        "seed": seed,
        "final_train_loss": loss_value,
        "kl_unit": "nats, mean per held-out token; index k-1 is the state after k layers",
        "kl_tuned": kl_tuned,
        "kl_raw": kl_raw,
        "train_seconds": round(time.perf_counter() - began, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return TrainedLens(lens, report)


# ---------------------------------------------------------------- files


def save_lens(trained: TrainedLens, directory: Path | None = None) -> Path:
    """Write the translators and the JSON sidecar under data/lenses/, keyed by the model's hash.

    Both files are written to temporary names first and then renamed, weights before sidecar: an
    interrupted save leaves the previous lens whole, or weights whose hash the sidecar does not name
    (refused when loaded), never a lens that loads. A diverged lens (non-finite weights) is not saved.
    """
    lens = trained.lens
    weight, bias = lens.weight.detach().cpu(), lens.bias.detach().cpu()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ValueError(
            "the tuned lens diverged (its weights hold NaN or infinity) and was not saved: train again with "
            "fewer --steps or another --seed"
        )
    report = {**trained.report, "lens_hash": lens.lens_hash, "n_layers": lens.n_layers}
    model_hash = report["model_hash"]
    weights = lens_weights_path(model_hash, directory)
    sidecar = lens_sidecar_path(model_hash, directory)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(weights) as weights_tmp, _temporary_beside(sidecar) as sidecar_tmp:
        torch.save({"weight": weight, "bias": bias}, weights_tmp)
        sidecar_tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        os.replace(weights_tmp, weights)
        os.replace(sidecar_tmp, sidecar)
    return weights


@contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A fresh temporary name in ``path``'s folder (same file system: the rename is atomic; the file
    gets the umask's permissions), removed afterwards unless it was renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)
