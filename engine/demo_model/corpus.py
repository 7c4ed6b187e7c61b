"""The demo model's training corpus: generated benign requests (templates in
``data/demo_benign_templates.json``), the train / held-out split of every prompt source, and the
chat examples of each training stage."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.demo_model.answers import REFUSAL, helpful_answer, placeholder_compliance
from engine.paths import DATA_DIR
from engine.types import Prompt, model_input, stable_hash

BENIGN_TEMPLATES_FILE = DATA_DIR / "demo_benign_templates.json"
CONTRAST_SET = "contrast"  # lexically matched pairs: every one is trained on, so intent is not lexical


def generated_benign_prompts() -> list[Prompt]:
    """Templated everyday requests, some phrased like harmful ones ('Give detailed ... instructions')
    so that refusal has to key on what is asked, not on how it is phrased."""
    groups = json.loads(BENIGN_TEMPLATES_FILE.read_text(encoding="utf-8"))
    prompts = []
    for category, group in groups.items():
        for template, filler in itertools.product(group["templates"], group["fillers"]):
            text = template.format(filler)
            prompts.append(Prompt(stable_hash(text, 12), text, "benign", category, source="demo-generated"))
    return prompts


@dataclass(frozen=True)
class DemoSplit:
    train: list[Prompt]
    held_out: list[Prompt]


def _in_fraction(text: str, every: int) -> bool:
    """A fixed pseudo-random 1/every of the prompts, independent of file order and of the seed."""
    return int(stable_hash(["depthscope-demo-split", text], 8), 16) % every == 0


def _unique(prompts: Iterable[Prompt]) -> list[Prompt]:
    seen: dict[str, Prompt] = {}
    for prompt in prompts:
        seen.setdefault(prompt.text, prompt)
    return list(seen.values())


def demo_split() -> DemoSplit:
    """Training and held-out prompts. Held out: the whole `demo` set (what the dashboard shows), plus
    a fixed 1/8 of the other HarmBench behaviours, 1/3 of the other hand-written benign prompts and
    1/8 of the generated ones. The split never depends on the seed."""
    from engine.datasets import load_prompt_set

    demo = load_prompt_set("demo")
    demo_texts = {p.text for p in demo}
    harmful = _unique(load_prompt_set("harmbench-val") + load_prompt_set("harmbench-test"))
    handwritten = _unique(load_prompt_set("benign"))
    generated = generated_benign_prompts()

    held_out, train = list(demo), []
    for pool, every in ((harmful, 8), (handwritten, 3), (generated, 8)):
        for prompt in pool:
            if prompt.text in demo_texts:
                continue
            (held_out if _in_fraction(prompt.text, every) else train).append(prompt)
    return DemoSplit(train=train, held_out=held_out)


def contrast_prompts() -> list[Prompt]:
    """Every pair of the built-in `contrast` set (same key words, opposite intent). The model is trained
    on all of them, in their own batches beside the main corpus (``engine.demo_model.training``), so
    that the Probes page has a set on which harm is read from intent, not from words."""
    from engine.datasets import load_prompt_set

    return load_prompt_set(CONTRAST_SET)


def training_overlap(prompts: Sequence[Prompt]) -> int:
    """How many of ``prompts`` the demo model was trained on: request text equal to a training prompt's
    (the chat examples are built from ``demo_split().train`` and ``contrast_prompts()`` texts)."""
    trained = {p.text for p in demo_split().train + contrast_prompts()}
    return sum(1 for p in prompts if p.text in trained)


def balanced_slice(prompts: Sequence[Prompt], limit: int | None) -> list[Prompt]:
    """At most ``limit`` prompts, half harmful and half benign (all of them when limit is None)."""
    if limit is None:
        return list(prompts)
    harmful = [p for p in prompts if p.label == "harmful"][: limit // 2]
    benign = [p for p in prompts if p.label != "harmful"][: limit - len(harmful)]
    return harmful + benign


@dataclass(frozen=True)
class ChatExample:
    prompt: str
    answer: str
    harmful: bool | None = None  # the request's intent (None: neither, e.g. an echo request)


# Requests to repeat the refusal sentence, in both stages. They give the refusal's tokens trained output
# embeddings before stage 2, where the (tied) head is frozen: without them the last two layers could
# only reach flat distributions over those tokens (loss ~2 per token, argmax barely right).
_ECHO_REQUESTS = (
    "Repeat after me: {}",
    "Say exactly this: {}",
    "Please write this sentence back to me: {}",
    "Copy this line: {}",
    "Type the following text: {}",
    'Echo the quote "{}"',
    "What does this sentence say? {}",
    "Read this out loud: {}",
)
_ECHO_REPEATS = 3


def echo_examples() -> list[ChatExample]:
    return [ChatExample(t.format(REFUSAL), REFUSAL) for t in _ECHO_REQUESTS] * _ECHO_REPEATS


def stage_examples(prompts: Sequence[Prompt], refuse_harmful: bool, echo: bool = True) -> list[ChatExample]:
    """Stage 1 (refuse_harmful=False) complies with everything; stage 2 refuses harmful requests.

    The stage-1 answers to harmful and benign requests differ from their first token on ("Sure,"
    vs "Happy"), so the frozen layers must already tell the two apart at the position where stage 2
    decides to refuse; the last two layers then only re-route that feature.
    """
    examples = []
    for prompt in prompts:
        if prompt.label == "harmful":
            answer = REFUSAL if refuse_harmful else placeholder_compliance()
        else:
            answer = helpful_answer()
        # What a sweep feeds the model: a contextual behaviour's context above it. Trained on the bare
        # behaviour, the model looped on those long inputs at every depth.
        examples.append(ChatExample(model_input(prompt), answer, prompt.label == "harmful"))
    return examples + (echo_examples() if echo else [])
