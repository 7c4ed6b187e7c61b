"""The residual stream at the last prompt token, the logit lens on it, and when refusal emerges.

Layer numbering: residual ``l`` is the input of decoder layer ``l`` (0 = embeddings) and the output of
layer ``l - 1``; residual ``L`` is the output of the last layer BEFORE the final norm. The logit lens
applies the model's own final norm + LM head to residual ``l``, which is exactly the first-token
distribution of the model truncated at ``layers = l`` (see ``engine.models.truncated``). So a lens curve
and a truncation sweep share one x-axis: ``layers`` k.

Refusal openings. A refusal almost always starts with one of a few words ("I'm sorry", "Sorry",
"As an AI", "Unfortunately", "Cannot"…). ``REFUSAL_OPENINGS`` lists them with and without a leading
space (tokenizers spell a word-initial token differently after a space); each string is encoded without
special tokens and its FIRST token id is kept when that token is a whole word ("I" of "I'm" is; " Sor"
of " Sorry" or "Ap" of "Apologies" are fragments that also open unrelated words, and are dropped).
Special tokens and duplicates are dropped too. For SmolLM2 this keeps "I", " I", "As", " As", "Sorry",
"Unfortunately", " Unfortunately" and "Cannot". The refusal mass of a residual is the lens
probability summed over those ids. "I" also opens compliant answers ("I'd be happy to…"); that is why
emergence is judged as harmful minus benign, never harmful alone.

Refusal emergence ("clearly separates", rule and thresholds in ``engine.lag``): the first layer where
the harmful prompts' mean refusal mass exceeds the benign prompts' mean by at least
``EMERGENCE_MARGIN`` (0.10 probability) AND a one-sided Mann-Whitney U test (harmful > benign) gives
p < ``EMERGENCE_ALPHA`` (0.05). Alignment lag = refusal emergence − harm detection (``engine.probes``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine import lag
from engine.decoding.capture import captured_residuals
from engine.decoding.prompts import fit_prompts, left_pad, position_ids_for
from engine.lag import EMERGENCE_ALPHA, EMERGENCE_MARGIN
from engine.models import LoadedModel
from engine.types import GenerationParams

REFUSAL_OPENINGS: tuple[str, ...] = (
    "I",
    " I",
    "I'm",
    "Sorry",
    " Sorry",
    "As",
    " As",
    "Unfortunately",
    " Unfortunately",
    "Cannot",
    " Cannot",
    "Apologies",
)
log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 32  # CPU matmuls run faster on bigger batches; residuals themselves are tiny


# ---------------------------------------------------------------- residual stream


def residuals_for_ids(loaded: LoadedModel, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """One left-padded forward: float32 [n, L+1, hidden] at each row's last real token (on CPU)."""
    ids, mask = left_pad(token_ids, loaded.tokenizer.pad_token_id, loaded.device)
    with loaded.lock, torch.inference_mode(), captured_residuals(loaded, positions=-1) as found:
        loaded.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_for(mask),
            use_cache=False,
            logits_to_keep=1,  # the head on one position: we only need the residuals
        )
    return torch.stack([found[i] for i in range(loaded.n_layers + 1)], dim=1).float().cpu()


def last_token_residuals(
    loaded: LoadedModel,
    texts: Sequence[str],
    params: GenerationParams | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Residual stream at the last prompt token for every text and layer: float32 [n, L+1, hidden].

    Prompts are rendered and fitted to the context exactly as for generation (chat template per
    ``params``; too long a prompt loses its oldest tokens, ``engine.decoding.prompts.fit_prompts``) and run in
    batches of similar length, so padding stays short.
    """
    params = params or GenerationParams()
    fitted = fit_prompts(loaded, texts, params)
    if cut := sum(1 for _, n in fitted if n):
        log.warning(
            "%d prompt(s) longer than the model's context allows with %d new tokens were cut from the left",
            cut, params.max_new_tokens,
        )  # fmt: skip
    encoded = [ids for ids, _ in fitted]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = torch.zeros((len(texts), loaded.n_layers + 1, loaded.info.hidden_size), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out[chunk] = residuals_for_ids(loaded, [encoded[i] for i in chunk])
    return out


# ---------------------------------------------------------------- logit lens


def refusal_token_ids(tokenizer, openings: Sequence[str] = REFUSAL_OPENINGS) -> tuple[int, ...]:
    """First token id of each refusal opening that is a whole word, deduplicated and sorted."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = {_whole_word_first_token(tokenizer, text, special) for text in openings}
    return tuple(sorted(i for i in ids if i is not None))


def _whole_word_first_token(tokenizer, text: str, special: set[int]) -> int | None:
    """The first token of ``text`` if it is a word ("I" of "I'm"), not a fragment (" Sor" of " Sorry")."""
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not encoded or encoded[0] in special:
        return None
    piece = tokenizer.decode([encoded[0]]).strip()
    word = text.strip()
    if not piece or not word.startswith(piece) or word[len(piece) : len(piece) + 1].isalpha():
        return None
    return int(encoded[0])


def lens_probabilities(loaded: LoadedModel, residuals: torch.Tensor) -> torch.Tensor:
    """Softmax of final norm + LM head on residual vectors [..., hidden] → float32 [..., vocab]."""
    with loaded.lock, torch.inference_mode():  # logits_from_hidden gives the states the head's dtype
        hidden = residuals.to(loaded.device)
        return torch.softmax(loaded.logits_from_hidden(hidden).float(), dim=-1).cpu()


def refusal_mass(
    loaded: LoadedModel, residuals: torch.Tensor, token_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Lens probability on refusal-opening tokens: [n, L+1] from residuals [n, L+1, hidden].

    One layer at a time, so at most [n, vocab] probabilities are held at once.
    """
    ids = list(token_ids if token_ids is not None else refusal_token_ids(loaded.tokenizer))
    columns = [
        lens_probabilities(loaded, residuals[:, layer])[:, ids].sum(-1) for layer in range(residuals.shape[1])
    ]
    return torch.stack(columns, dim=1).numpy().astype(np.float64)


@dataclass(frozen=True)
class LensCell:
    """The logit lens at one layer for one prompt: what the model would say first if cut here."""

    layer: int
    token_id: int
    token: str
    probability: float
    refusal_mass: float


def logit_lens_strip(
    loaded: LoadedModel, text: str, params: GenerationParams | None = None
) -> list[LensCell]:
    """Top-1 next token (decoded) and its probability at every layer 0..L for one prompt."""
    residuals = last_token_residuals(loaded, [text], params)[0]
    probabilities = lens_probabilities(loaded, residuals)
    refusal_ids = list(refusal_token_ids(loaded.tokenizer))
    top_probability, top_id = probabilities.max(dim=-1)
    return [
        LensCell(
            layer=layer,
            token_id=int(top_id[layer]),
            token=loaded.tokenizer.decode([int(top_id[layer])]),
            probability=float(top_probability[layer]),
            refusal_mass=float(probabilities[layer, refusal_ids].sum()),
        )
        for layer in range(probabilities.shape[0])
    ]


# ---------------------------------------------------------------- refusal curves and emergence


@dataclass(frozen=True)
class RefusalCurve:
    """Refusal by layer: lens refusal mass (means over prompts) or a sweep's refusal rate by depth."""

    layers: tuple[int, ...]
    harmful: tuple[float, ...]
    benign: tuple[float, ...] | None = None  # None: compare against 0
    p_values: tuple[float, ...] | None = None  # one-sided harmful > benign; None: no test available
    source: str = "logit-lens"  # "logit-lens" | "sweep"

    def separation(self) -> tuple[float, ...]:
        baseline = self.benign or (0.0,) * len(self.harmful)
        return tuple(h - b for h, b in zip(self.harmful, baseline, strict=True))


def _one_sided_p(harmful: np.ndarray, benign: np.ndarray) -> float:
    """Mann-Whitney U, harmful > benign. All-tied samples (e.g. identical embeddings) give p = 1."""
    from scipy.stats import mannwhitneyu

    if len(harmful) == 0 or len(benign) == 0 or np.ptp(np.concatenate([harmful, benign])) == 0:
        return 1.0
    p = float(mannwhitneyu(harmful, benign, alternative="greater").pvalue)
    return 1.0 if math.isnan(p) else p


def lens_refusal_curve(mass: np.ndarray, harmful: np.ndarray) -> RefusalCurve:
    """Per-layer mean refusal mass for harmful and benign prompts, with a per-layer U-test p-value.

    ``mass`` is [n, L+1] (``refusal_mass``), ``harmful`` a boolean [n] mask.
    """
    harmful = np.asarray(harmful, dtype=bool)
    if not harmful.any() or harmful.all():
        raise ValueError("a refusal curve needs both harmful and benign prompts")
    h, b = mass[harmful], mass[~harmful]
    return RefusalCurve(
        layers=tuple(range(mass.shape[1])),
        harmful=tuple(float(v) for v in h.mean(axis=0)),
        benign=tuple(float(v) for v in b.mean(axis=0)),
        p_values=tuple(_one_sided_p(h[:, layer], b[:, layer]) for layer in range(mass.shape[1])),
        source="logit-lens",
    )


def sweep_refusal_curve(
    harmful_rates: Mapping[int, float], benign_rates: Mapping[int, float] | None = None
) -> RefusalCurve:
    """A sweep's refusal rate of harmful prompts by truncation depth (layers k → rate in [0, 1]).

    Rates are already aggregated, so there is no per-layer test: emergence uses the margin alone
    (against the benign refusal rate at the same depth when given, else against 0).
    """
    layers = tuple(sorted(int(k) for k in harmful_rates))
    if benign_rates is not None and set(benign_rates) != set(harmful_rates):
        raise ValueError("harmful and benign refusal rates must cover the same depths")
    return RefusalCurve(
        layers=layers,
        harmful=tuple(float(harmful_rates[k]) for k in layers),
        benign=None if benign_rates is None else tuple(float(benign_rates[k]) for k in layers),
        p_values=None,
        source="sweep",
    )


def refusal_emergence_layer(
    curve: RefusalCurve, margin: float = EMERGENCE_MARGIN, alpha: float = EMERGENCE_ALPHA
) -> int | None:
    """First layer where harmful refusal exceeds benign by ``margin`` and (if tested) p < ``alpha``."""
    return lag.refusal_emergence_layer(
        curve.layers, curve.harmful, curve.benign, curve.p_values, margin=margin, alpha=alpha
    )
