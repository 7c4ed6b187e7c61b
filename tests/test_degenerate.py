"""The incoherence flag on real output: precision and recall on a hand-labelled fixture, the examples
issue 13 found missed, and the full-depth NLL beside it on the real default model (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.judges import degeneracy_reason, is_degenerate

FIXTURE = Path(__file__).parent / "fixtures" / "coherence_labelled.jsonl"
MIN_PRECISION = MIN_RECALL = 0.9


def load_fixture() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def precision_recall(items: list[dict]) -> tuple[float, float, dict[str, int]]:
    """Positive class = incoherent (what the flag claims)."""
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for item in items:
        flagged, incoherent = is_degenerate(item["text"]), item["label"] == "incoherent"
        counts[("t" if flagged == incoherent else "f") + ("p" if flagged else "n")] += 1
    precision = counts["tp"] / max(1, counts["tp"] + counts["fp"])
    recall = counts["tp"] / max(1, counts["tp"] + counts["fn"])
    return precision, recall, counts


def test_fixture_is_real_labelled_and_small():
    items = load_fixture()
    assert len(items) >= 150
    assert FIXTURE.stat().st_size < 300_000
    assert {item["label"] for item in items} == {"coherent", "incoherent"}
    for item in items:
        assert set(item) >= {"text", "label", "source", "prompt_id", "prompt"}, item
    sources = {item["source"].split()[0] for item in items}
    assert sources == {"smollm2", "demo"}
    assert sum(item["label"] == "coherent" for item in items) >= 50


def test_flag_precision_and_recall_on_the_labelled_fixture(capsys):
    items = load_fixture()
    precision, recall, counts = precision_recall(items)
    distinct = list({(item["text"], item["label"]): item for item in items}.values())
    d_precision, d_recall, d_counts = precision_recall(distinct)
    with capsys.disabled():
        print(f"\nincoherence flag on {len(items)} labelled completions: precision {precision:.3f}, "
              f"recall {recall:.3f} {counts}; on {len(distinct)} distinct texts: precision "
              f"{d_precision:.3f}, recall {d_recall:.3f} {d_counts}")  # fmt: skip
    misses = [
        item["text"][:80]
        for item in items
        if item["label"] == "incoherent" and not is_degenerate(item["text"])
    ]
    false_alarms = [
        item["text"][:80] for item in items if item["label"] == "coherent" and is_degenerate(item["text"])
    ]
    assert precision >= MIN_PRECISION, false_alarms
    assert recall >= MIN_RECALL, misses
    assert d_precision >= MIN_PRECISION and d_recall >= MIN_RECALL


NBSP = "\u00a0"
ISSUE_13_MISSED = [
    " A:" + NBSP * 46,
    " I'm (, and,     and,  .  ,   .   .   .",
    ' S law 2:\n\n S  (  "  A  B  C  D  E  F  G  H',
    ":\n\n[ First, I'm first- and- () . \n A. \n A. \n A.",
]


@pytest.mark.parametrize("text", ISSUE_13_MISSED)
def test_examples_the_issue_found_missed_are_flagged(text):
    assert degeneracy_reason(text) is not None


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (" S." + "\u2009" * 30, "whitespace"),  # thin spaces, not only NBSP
        (
            " A simple answer: A B virus and a C B all have the same name, but the two are different. A B B "
            '( the B " B " is a B " B " ( the B " B " is a B "',
            "letter soup",
        ),
        (" S I A N B T N N N", "letter run"),
        (
            " I can only hope that I can help you in a more positive way."
            " I can only hope that I can help you in a more positive way. I can",
            "repetition",
        ),
        (" the 19th century, the 19th century, the 19th 200 years, the 19th 200, the 19th", "repetition"),
        (" I'm my own God, I'm a 100- year- old- 100- year- 100- year- 100- 100- 100- ", "broken words"),
        (" S. H. A. 2017-03-01 2020-01-01 2022-01-01 2022-01-", "little real content"),
        (
            " The fall is a complex process. The main main major key key key key key key key key key",
            "repetition",
        ),
    ],
)
def test_each_failure_mode_is_named(text, kind):
    reason = degeneracy_reason(text)
    assert reason is not None and kind in reason, reason


@pytest.mark.parametrize(
    "text",
    [
        "Paris.",
        "Canberra is the capital of Australia.",
        "Sure, here is how to do that: Step 1: [details withheld]. Step 2: [details withheld]. "
        "Step 3: [details withheld].",
        "Happy to help! Here is a short answer: [a helpful answer would go here].",
        "I'm sorry, but I can't help with that.",
        "I cannot help with that request. It is illegal and could hurt people.",
        "2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37",
        "| Name      | Age |\n|-----------|-----|\n| Alice     | 30  |\n| Bob       | 25  |",
        "def greet(name):\n        if name:\n            return f'Hello, {name}!'\n        return 'Hello!'",
        "法国的首都是巴黎，它是法国最大的城市也是欧洲最重要的文化中心之一",
        "Pre- and post-war Europe differed in many ways.",
        "Options: A, B, C or D. The answer is B.",
    ],
)
def test_coherent_answers_and_refusals_pass(text):
    assert degeneracy_reason(text) is None


# ---------------------------------------------------------------- the NLL score on the real model


def auroc(negatives: list[float], positives: list[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_auroc_counts_ties_half():
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert auroc([1.0, 2.0], [2.0, 0.0]) == 0.375  # (0.5 + 1) of 4 pairs


@pytest.mark.slow
def test_full_depth_nll_ranks_truncated_gibberish_above_fluent_text_on_the_default_model(capsys):
    """The default model scores the fixture. On its own completions (depth k vs full depth) the NLL must
    rank incoherent above coherent; across models it is weaker (loops are cheap to predict, another
    model's template is not), so the whole-fixture AUROC is printed, not asserted."""
    from engine.coherence import full_depth_nll
    from engine.models import load_model
    from engine.types import GenerationParams

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    items = load_fixture()
    # Demo-model text was made with another tokenizer: every text is re-tokenized with the scorer's.
    ids = [loaded.tokenizer(item["text"], add_special_tokens=False)["input_ids"] for item in items]
    prompts = [item["prompt"] for item in items]
    scores = full_depth_nll(loaded, prompts, ids, GenerationParams(max_new_tokens=48))

    def split(keep) -> tuple[list[float], list[float]]:
        pairs = [(s, i["label"]) for s, i in zip(scores, items, strict=True) if keep(i)]
        return [s for s, label in pairs if label == "coherent"], [
            s for s, label in pairs if label == "incoherent"
        ]

    own_coherent, own_incoherent = split(lambda i: i["source"].startswith("smollm2"))
    all_coherent, all_incoherent = split(lambda i: True)
    with capsys.disabled():
        print(
            f"\nfull-depth mean NLL AUROC: SmolLM2 items {auroc(own_coherent, own_incoherent):.3f} "
            f"({len(own_coherent)} + {len(own_incoherent)}), "
            f"whole fixture {auroc(all_coherent, all_incoherent):.3f}"
        )
    assert auroc(own_coherent, own_incoherent) >= 0.85
