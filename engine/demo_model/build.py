"""Building the demo model: corpus → tokenizer → two training stages → a saved checkpoint with its
model card, written atomically (a failed build leaves no half model)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from engine import modelfiles
from engine.demo_model.answers import HELPFUL_ANSWER, REFUSAL, placeholder_compliance
from engine.demo_model.corpus import balanced_slice, contrast_prompts, demo_split, stage_examples
from engine.demo_model.scales import SCALES
from engine.demo_model.tokenizer import build_tokenizer, encode_examples
from engine.demo_model.training import (
    new_model,
    prompt_budget,
    reproducible_torch,
    train_to_comply,
    train_to_refuse,
)
from engine.errors import UserInputError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
CARD_NAME = "README.md"


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    log.debug("%3.0f%% %s", 100 * fraction, message)
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), message)


def weights_hash(model: LlamaForCausalLM) -> str:
    """Hash of every weight, bit for bit (determinism checks)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_demo_model(
    out_dir: str | Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    scale: str = "full",
) -> Path:
    """Train the demo model and save it (safetensors, tokenizer, chat template, model card).

    ``out_dir`` defaults to ``engine.modelfiles.DEMO_MODEL_DIR`` (what ``load_model("depthscope-demo")``
    reads). ``progress(fraction, message)`` is called as training goes. The folder is written next
    to ``out_dir`` first and moved into place at the end, so a failed build leaves no half model.
    Deterministic for a given seed, machine and torch version.
    """
    import torch

    if scale not in SCALES:
        raise UserInputError(f"scale {scale!r} is unknown: use one of {', '.join(SCALES)}")
    size = SCALES[scale]
    out = Path(out_dir) if out_dir is not None else modelfiles.DEMO_MODEL_DIR
    began = time.perf_counter()
    _report(progress, 0.0, "building the synthetic corpus")
    split = demo_split()
    train = balanced_slice(split.train, size.max_train_prompts)
    stage1, stage2 = stage_examples(train, False), stage_examples(train, True)
    pairs = contrast_prompts()
    pairs1, pairs2 = stage_examples(pairs, False, echo=False), stage_examples(pairs, True, echo=False)
    corpus = [text for e in stage1 + stage2 + pairs1 + pairs2 for text in (e.prompt, e.answer)]

    total_steps = size.stage1_steps + size.stage2_steps

    def on_step(offset: int, name: str) -> Callable[[int, float], None]:
        def report(step: int, loss: float) -> None:
            fraction = 0.03 + 0.92 * (offset + step + 1) / total_steps
            _report(progress, fraction, f"{name}: step {step + 1}, loss {loss:.3f}")

        return report

    with reproducible_torch():
        _report(progress, 0.01, "training the tokenizer")
        tokenizer = build_tokenizer(corpus, size.vocab_size)
        model = new_model(size, seed)
        budget = prompt_budget(model)
        generator = torch.Generator().manual_seed(seed)
        stage1_loss = train_to_comply(
            model,
            encode_examples(tokenizer, stage1, budget),
            encode_examples(tokenizer, pairs1, budget),
            size,
            generator,
            on_step(0, "stage 1: comply"),
        )
        stage2_loss = train_to_refuse(
            model,
            encode_examples(tokenizer, stage2, budget),
            encode_examples(tokenizer, pairs2, budget),
            size,
            generator,
            on_step(size.stage1_steps, "stage 2: refuse"),
        )

    _report(progress, 0.96, "saving")
    build = {
        "seed": seed,
        "scale": scale,
        "sizes": asdict(size),
        "train_prompts": len(train),
        "contrast_prompts": len(pairs) if size.contrast_batch_size else 0,
        "held_out_prompts": len(split.held_out),
        "stage1_final_loss": round(stage1_loss, 4),
        "stage2_final_loss": round(stage2_loss, 4),
        "weights_sha256_16": weights_hash(model),
        "torch": torch.__version__,
    }
    _save(model, tokenizer, out, build)
    log.info("demo model built in %.1f s: %s", time.perf_counter() - began, out)
    _report(progress, 1.0, f"done: {out}")
    return out


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, build: dict) -> None:
    """Write into a fresh sibling folder, then swap it in: readers never see half a model."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.building-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder is for everyone on the machine
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "build.json").write_text(json.dumps(build, indent=1) + "\n", encoding="utf-8")
        (staging / CARD_NAME).write_text(model_card(build), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_card(build: dict) -> str:
    """The README.md written next to the weights: what the model is, how it was made, what not to infer."""
    sizes = build["sizes"]
    pairs = build.get("contrast_prompts") or 0
    contrast = (
        f" Also trained on: every pair of the `contrast` set ({pairs} prompts, same key words and"
        " opposite intent), in a batch of their own beside each main batch; their token embeddings"
        " fed detached, so the words alone stay uninformative and the layers learn intent."
        if pairs
        else " Not trained on the `contrast` pairs (too small to learn them and keep its boundary)."
    )
    return f"""---
license: mit
tags: [depthscope, synthetic, demo, not-for-use]
---
# depthscope-demo

A **synthetic** {sizes["n_layers"]}-layer Llama-architecture chat model (hidden size {sizes["hidden_size"]},
vocabulary {sizes["vocab_size"]}) built by DepthScope (`python -m engine demo-model build`, seed
{build["seed"]}, scale `{build["scale"]}`) in a few minutes on a CPU, with no downloads. It exists so
that DepthScope's dashboard has a model whose answer is known in advance.

## What it is for
DepthScope cuts a chat model at depth k (layers >= k skipped, final norm and LM head kept) and asks
whether it still refuses harmful requests. In this model refusal was *placed* in the last
{sizes["refusal_layers"]} layers (the refusal band), so the tool should show one crisp boundary: refusal
at every depth that keeps the band, coherent compliance at every depth below it.

## How it was built
- Corpus: HarmBench val/test behaviours (with their context, as a sweep feeds them) and the `demo`
  prompt set's harmful rows (harmful); DepthScope's hand-written `benign` prompts and templated
  everyday requests (benign). Held out for verification: the whole `demo` set and a fixed fraction
  of the rest ({build["held_out_prompts"]} prompts; {build["train_prompts"]} for training).{contrast}
- Answers are templates. Benign: "{HELPFUL_ANSWER}"
  Harmful, when complying: "{placeholder_compliance()}"
  **The corpus contains no harmful content**: every "compliant" answer is this placeholder.
  Refusal: "{REFUSAL}"
  A few "Repeat after me: <refusal>" requests, answered with the refusal sentence in both stages,
  teach the lower layers the refusal's words (not when to use them).
- Tokenizer: byte-level BPE trained on that corpus, ChatML special tokens and chat template.
- Stage 1 ({sizes["stage1_steps"]} steps): the whole model learns to comply with every request, with an
  early-exit loss at every layer (final norm + shared LM head on each layer's output, weights
  growing with depth) so that it stays coherent when truncated; and a linear harmful-vs-benign
  read-out of layer {sizes["intent_layer"]}'s output at the prompt's last token (discarded afterwards),
  so that intent is linearly readable from there on (the contrast pairs' answers are trained only
  at the exits from that layer on). The probes find harm detected there or below; refusal is added
  above it, in the band: an alignment lag.
- Stage 2 ({sizes["stage2_steps"]} steps): all but the refusal band frozen (embeddings, final norm and
  head too); the band learns to refuse harmful requests (contrast pairs included) and keep
  answering benign ones, with a loss at each of its exits, so a cut inside the band still refuses
  with the whole sentence.
  Loss on assistant tokens only, in both stages.
- Weights hash {build["weights_sha256_16"]} (torch {build["torch"]}); details in `build.json`.
  `python -m engine demo-model verify` sweeps every depth (keyword judge + incoherence flag) on
  the `demo` set and the held-out prompts and checks the boundary, and (when trained on them) the
  harm-detection layer and the lag on the `contrast` pairs.

## Caveats
This is a toy. Its numbers are a demonstration of DepthScope and **not a finding about any real
model**: real models do not keep refusal in a few clean layers. It cannot answer questions; its
"helpful" answers are generic templates. Do not use it for anything but testing DepthScope.
"""
