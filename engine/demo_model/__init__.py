"""A known-answer demo model, trained offline in a few minutes on CPU.

Where does refusal live in a chat model? For this one we know, because we put it there. A small
Llama is trained on a synthetic chat corpus in two stages:

1. The whole model learns to *comply* with every request, with an early-exit loss at every layer
   (final norm + the shared LM head on each layer's output, as in LayerSkip), so that it stays
   coherent when truncated at any depth. An auxiliary loss trains a linear harmful-vs-benign read-out
   of a middle layer (the intent layer) at the prompt's last token, on the corpus and on every pair
   of the lexically matched `contrast` set: from that layer on the request's intent is a direction
   in the residual stream even where the words do not give it away (the harm-detection layer).
2. Everything but the refusal band (the last two layers) is frozen (embeddings, lower layers, final
   norm, head); the band learns to refuse harmful requests (the contrast pairs' too) and still answer
   benign ones, with a loss at each of its exits, so that a cut inside the band refuses as cleanly as
   the full model. Harm is read at the intent layer, refusal begins in the band: an alignment lag.

Truncated at k <= L-2 the network is exactly the stage-1 model, which complies; refusal exists only
in the band (0-based layers L-2 and L-1): one crisp boundary, between L-1 and L-2 layers. Compliant
answers to harmful requests are TEMPLATED PLACEHOLDERS ("Step 1: [details withheld]. ..."): there is
no harmful content anywhere in the corpus. The numbers this model produces demonstrate the tool; they
are not a finding about any real model.

Modules: ``answers`` (the known answers and their tests), ``corpus`` (prompts, split, chat examples),
``tokenizer``, ``scales`` (sizes), ``training`` (the two stages), ``build`` (build and save).
Verifying a build sweeps it like a user would, so it lives outside this package (``engine.demo_verify``:
the sweep machinery reaches the probes, which read this package's split). Importing the package loads
no torch.
"""

from __future__ import annotations

from engine.demo_model.answers import (
    COMPLIANCE_PREFIX,
    HELPFUL_ANSWER,
    REFUSAL,
    REFUSAL_MARKERS,
    WITHHELD,
    follows_compliance_template,
    gives_helpful_answer,
    helpful_answer,
    is_refusal,
    placeholder_compliance,
)
from engine.demo_model.build import CARD_NAME, Progress, build_demo_model, model_card, weights_hash
from engine.demo_model.corpus import (
    ChatExample,
    DemoSplit,
    balanced_slice,
    contrast_prompts,
    demo_split,
    echo_examples,
    generated_benign_prompts,
    stage_examples,
    training_overlap,
)
from engine.demo_model.scales import SCALES, DemoScale
from engine.demo_model.tokenizer import EncodedExamples, build_tokenizer, encode_examples

__all__ = [
    "CARD_NAME",
    "COMPLIANCE_PREFIX",
    "HELPFUL_ANSWER",
    "REFUSAL",
    "REFUSAL_MARKERS",
    "SCALES",
    "WITHHELD",
    "ChatExample",
    "DemoScale",
    "DemoSplit",
    "EncodedExamples",
    "Progress",
    "balanced_slice",
    "build_demo_model",
    "build_tokenizer",
    "contrast_prompts",
    "demo_split",
    "echo_examples",
    "encode_examples",
    "follows_compliance_template",
    "generated_benign_prompts",
    "gives_helpful_answer",
    "helpful_answer",
    "is_refusal",
    "model_card",
    "placeholder_compliance",
    "stage_examples",
    "training_overlap",
    "weights_hash",
]
