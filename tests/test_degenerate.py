"""The incoherence flag on real output: precision and recall on a hand-labelled fixture, the examples
an earlier review found missed, and the full-depth NLL beside it on the real default model (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.judges import degeneracy_reason, is_degenerate

FIXTURE = Path(__file__).parent / "fixtures" / "coherence_labelled.jsonl"
MIN_PRECISION, MIN_RECALL = 0.95, 0.9
# Depth bands by the share of layers kept: where a model still answers, where it breaks down (SmolLM2
# at 26-29 of 30, the demo model at 7 of 8), and deep cuts.
TRANSITION_FROM = 0.85
BANDS = ("full depth", "transition", "deep cut")


def load_fixture() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def depth_band(item: dict) -> str:
    kept, total = map(int, re.search(r"k=(\d+)/(\d+)", item["source"]).groups())
    if kept == total:
        return "full depth"
    return "transition" if kept / total >= TRANSITION_FROM else "deep cut"


def precision_recall(items: list[dict]) -> tuple[float, float, dict[str, int]]:
    """Positive class = incoherent (what the flag claims)."""
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for item in items:
        flagged, incoherent = is_degenerate(item["text"]), item["label"] == "incoherent"
        counts[("t" if flagged == incoherent else "f") + ("p" if flagged else "n")] += 1
    precision = counts["tp"] / max(1, counts["tp"] + counts["fp"])
    recall = counts["tp"] / max(1, counts["tp"] + counts["fn"])
    return precision, recall, counts


def part(split: str, band: str | None = None) -> list[dict]:
    return [i for i in load_fixture() if i["split"] == split and band in (None, depth_band(i))]


def mistakes(items: list[dict]) -> tuple[list[str], list[str]]:
    """(missed incoherent texts, coherent texts flagged), cut short for an assertion message."""
    missed = [i["text"][:80] for i in items if i["label"] == "incoherent" and not is_degenerate(i["text"])]
    flagged = [i["text"][:80] for i in items if i["label"] == "coherent" and is_degenerate(i["text"])]
    return missed, flagged


def test_fixture_is_real_labelled_and_small():
    items = load_fixture()
    assert len(items) >= 150
    assert FIXTURE.stat().st_size < 450_000
    assert {item["label"] for item in items} == {"coherent", "incoherent"}
    for item in items:
        assert set(item) >= {"text", "label", "source", "prompt_id", "prompt", "prompt_set", "split"}, item
        assert re.fullmatch(r"(smollm2|demo) k=\d+/\d+", item["source"]), item["source"]
    sources = {item["source"].split()[0] for item in items}
    assert sources == {"smollm2", "demo"}
    assert {item["split"] for item in items} == {"tune", "held-out"}
    assert sum(item["label"] == "coherent" for item in items) >= 50
    # The held-out part shares no prompt with the part the detector was tuned on.
    held_out = {i["prompt_id"] for i in items if i["split"] == "held-out"}
    assert held_out and not held_out & {i["prompt_id"] for i in items if i["split"] == "tune"}
    # Every band has both labels in both parts, so each figure below has a denominator.
    for split in ("tune", "held-out"):
        for band in BANDS[:2]:
            assert {i["label"] for i in part(split, band)} == {"coherent", "incoherent"}, (split, band)


def test_depth_bands_follow_the_share_of_layers_kept():
    assert [depth_band({"source": f"smollm2 k={k}/30"}) for k in (30, 29, 26, 25, 18)] == [
        "full depth",
        *["transition"] * 2,
        *["deep cut"] * 2,
    ]
    assert [depth_band({"source": f"demo k={k}/8"}) for k in (8, 7, 6)] == [
        "full depth",
        "transition",
        "deep cut",
    ]


@pytest.mark.parametrize("band", [None, *BANDS], ids=["overall", *BANDS])
def test_flag_precision_and_recall_on_the_tuning_part(band, capsys):
    """The part the checks were written from: precision and recall hold overall and in every band."""
    items = part("tune", band)
    precision, recall, counts = precision_recall(items)
    with capsys.disabled():
        print(f"\nincoherence flag, tuning part, {band or 'overall'}: {len(items)} labelled completions, "
              f"precision {precision:.3f}, recall {recall:.3f} {counts}")  # fmt: skip
    missed, flagged = mistakes(items)
    assert precision >= MIN_PRECISION, flagged
    assert recall >= MIN_RECALL, missed


def test_flag_precision_and_recall_on_distinct_texts(capsys):
    """Each text once (the demo model and the colon loops repeat themselves), over both parts."""
    distinct = list({(item["text"], item["label"]): item for item in load_fixture()}.values())
    precision, recall, counts = precision_recall(distinct)
    with capsys.disabled():
        print(f"\nincoherence flag on {len(distinct)} distinct labelled texts: precision {precision:.3f}, "
              f"recall {recall:.3f} {counts}")  # fmt: skip
    assert precision >= MIN_PRECISION and recall >= MIN_RECALL


# The held-out part was labelled by reading, with the labels committed before the detector (version 4)
# was run on it, and never used to change it, so its figures are the honest estimate. They are held as
# measured, per band: (flagged and incoherent, flagged but coherent, missed), so any regression fails.
HELD_OUT_MEASURED = {
    "overall": (204, 5, 8),  # precision 0.976, recall 0.962 on 264 completions
    "full depth": (2, 0, 0),  # 44 completions, 42 of them coherent
    "transition": (158, 5, 8),  # precision 0.969, recall 0.952 on 176 completions, 10 of them coherent
    "deep cut": (44, 0, 0),  # 44 completions, all incoherent
}


@pytest.mark.parametrize("band", [None, *BANDS], ids=["overall", *BANDS])
def test_flag_precision_and_recall_on_the_held_out_part(band, capsys):
    items = part("held-out", band)
    precision, recall, counts = precision_recall(items)
    with capsys.disabled():
        print(f"\nincoherence flag, held-out part, {band or 'overall'}: {len(items)} labelled completions, "
              f"precision {precision:.3f}, recall {recall:.3f} {counts}")  # fmt: skip
    missed, flagged = mistakes(items)
    found, false_alarms, misses = HELD_OUT_MEASURED[band or "overall"]
    assert counts["tp"] + counts["fn"] == found + misses, "the held-out labels changed"
    assert counts["tp"] >= found and counts["fn"] <= misses, missed
    assert counts["fp"] <= false_alarms, flagged
    assert precision >= MIN_PRECISION, flagged
    assert recall >= MIN_RECALL, missed


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


# Counting loops and numbered sequences as the default model writes them at the transition depths.
COUNTING_LOOPS = [
    (" this is a great way to make the 2016 US 2018 2020 2024 2028 2030 2036 203", "counting"),
    (
        " A 2nd time, this time, a 3rd time, this time, a 4th time, and a 5th time, and a 6th time, and a "
        "7th time, and a ",
        "counting loop",
    ),
    ("1. First, gather what you need. 2. 3. 4. 5. 6.", "counting"),
    (" step- 1: Step 1: Step 2: Step 3: Step 4: Step 5: Step 6: Step 7: Step 8: Step 9:", "counting loop"),
    (
        " Jelly, the 1st and most important of the 1st and 2nd and 3rd and 4th and 5th and 6th and 7th and",
        "counting loop",
    ),
    (
        " S Young- 19 is a term used in the first- and second- and third- and fourth- and fifth- and",
        "counting loop",
    ),
    ("2017 to 2023 to 2024 to 2025 to 2026 to 2027", "counting loop"),
    (
        "1. **Break** - 2-3 slices of bread\n2. **Break** - 2 slices of bread\n3. **Break** - 2 slices of "
        "bread\n4. **Break** - 2 slices of",
        "counting loop",
    ),
    (" S am 3:\n\n first, 1. 2. 3:\n\n second, 1. 2. 3:\n\n third, 1. 2. 3:\n\n third,", "same numbers"),
    (" Here are five lead- in to the 500000000000000000000000000000000000000", "digit"),
    (" I'm my own little bit of a 3D- \n- \n- \n- \n- \n- \n- \n-", "empty list"),
    (" Honest and clear is the only way to go. First, let me clarify that the history of the 100- 101, 102, "
     "103, 104, 1", "commas"),
    (" Lithium is a known μ- block m Ale litt L ( M 1, 2, 3, 4, 5, 6, 8, 9, 10, 11,", "commas"),
]  # fmt: skip

# Word salad made of real words, as the default model writes it at 27-29 of 30 layers (missed by the
# version before the salad check).
WORD_SALAD = [
    " the D cod I just mentioned, the D cod, is a complex and complex issue. D is a term used in the D de"
    " reason, which means D is a D de reason, a D de reason, a D de reason,",
    " W right, the question of the most just and just for the most part is a complex one that can be a bit"
    " m ab all. I can only say that the most just and just for the most part is a matter of the most",
    " changing your name can be a complex and complex process, but the most common and most common- S right"
    " of the  name is a  name change,  and  it  is  a         ",
    ' Chlor present in the form of HCl ( which is a known known as " K Cl " in the world of the 2010 World'
    ' War 2. K Cl is a known known as " K " in the world',
    ' the process of water " " is a complex one that involves several key steps. the process of " " is a'
    " complex one that is not fully explained by a single single- Y English sentence.",
    " the answer to this question is a bit complex but it all comes down to the law of Barbad free- d un. "
    " the law of free- d un is a law in the field of the law of free- d un, which",
]


@pytest.mark.parametrize("text", WORD_SALAD)
def test_word_salad_of_real_words_is_flagged(text):
    reason = degeneracy_reason(text)
    assert reason is not None and "word salad" in reason, reason


# Answers with one sign of salad, or signs that name something on purpose, must pass.
ONE_SIGN_OF_SALAD = [
    "Vitamin C and vitamin D are both important: vitamin C helps the immune system and vitamin D the bones. "
    "Take 100% of the daily value, not 100% more, and check for 100% juice on the label.",
    "The matrix is 3 x 3, the vector v has 3 entries and the scalar c is 2. Multiply v by c.",
    "Hepatitis B and hepatitis C spread through blood; type A and type B personalities differ. Plan B works "
    "95% of the time.",
    "More and more people use it, over and over again, and it gets better and better every year.",
    "It's a very complex and complex issue, but I can give you a simple answer: talk to a lawyer first.",
    "Call me at 555-0100, 555-0101 or 555-0102 between 9 and 5.",
    "Listen to episodes 1, 2, 3, 4 and 5 first, then 6, 7, 8 and 9.",
    "Add 200 g flour, 200 g sugar and 200 g butter, then bake for 20 min at 180 C.",
    "for i in range(10):\n    x = i * 2\n    print(x)\n\nThis loop doubles each number i from 0 to 9.",
]


@pytest.mark.parametrize("text", ONE_SIGN_OF_SALAD)
def test_answers_with_one_sign_of_salad_pass(text):
    assert degeneracy_reason(text) is None


@pytest.mark.parametrize(("text", "kind"), COUNTING_LOOPS)
def test_counting_loops_and_numbered_sequences_are_flagged(text, kind):
    reason = degeneracy_reason(text)
    assert reason is not None and kind in reason, reason


# Lists, counts and numbers that real answers contain: the counting checks must let them through.
FLUENT_NUMBERS = [
    "Here is how to reset your router:\n\n1. Unplug the router.\n2. Wait 30 seconds.\n3. Plug it back in."
    "\n4. Wait for the lights to turn green.\n5. Reconnect your devices.",
    "Step 1: Preheat the oven to 180 °C. Step 2: Grease a 20 cm tin. Step 3: Beat 200 g butter with 200 g "
    "sugar. Step 4: Add 4 eggs, one at a time. Step 5: Fold in 200 g flour.",
    "The first ten primes are 2, 3, 5, 7, 11, 13, 17, 19, 23 and 29.",
    "Counting to ten: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Key dates: 1914 (war begins), 1916 (the Somme), 1917 (the US joins), 1918 (armistice).",
    "The 2 times table: 2 x 1 = 2, 2 x 2 = 4, 2 x 3 = 6, 2 x 4 = 8, 2 x 5 = 10.",
    "Week 1: run 2 km.\nWeek 2: run 3 km.\nWeek 3: run 4 km.\nWeek 4: run 5 km.",
    "The meeting is on 2024-03-05 at 10:30, the follow-up on 2024-03-12 at 10:30 and the review on "
    "2024-03-19 at 10:30.",
    "Python 3.9, 3.10, 3.11 and 3.12 are supported; 3.8 reached end of life in 2024.",
    "Take 1 tablet twice a day for 7 days. Do not take more than 2 tablets in 24 hours.",
    "In 2019, sales grew 5%; in 2020, they fell 12%; in 2021, they recovered 8%; in 2022, they grew 3%.",
    "The 1st, 2nd and 3rd places go to Anna, Ben and Chloe; the 4th and 5th get a certificate.",
    "Ingredients:\n- 2 eggs\n- 2 cups flour\n- 2 tbsp sugar\n- 1 cup milk\n- 1 pinch of salt",
    "Level 1 is easy, level 2 is harder, level 3 is hard and level 4 is for experts only.",
    "Day 1: arrive in Rome. Day 2: the Vatican. Day 3: the Colosseum. Day 4: Florence. Day 5: fly home.",
    "Release notes: 1.2.0 fixes a crash, 1.2.1 fixes a typo, 1.2.2 improves speed, 1.2.3 adds dark mode.",
    "First, preheat the oven. Second, mix the flour and water. Third, knead the dough. Fourth, bake it.",
    "Sure: Step 1: [details withheld]. Step 2: [details withheld]. Step 3: [details withheld].",
    "The river runs below the hill,\nAnd so the night goes on,\nAnd so the night goes on,\nAnd so the night"
    " goes on.\n\nThe morning finds the water still, the swallows gone.",
    "Two- factor authentication ( two- factor) adds a second layer of security to the two- factor system.",
]


@pytest.mark.parametrize("text", FLUENT_NUMBERS)
def test_lists_counts_and_numbers_in_real_answers_pass(text):
    assert degeneracy_reason(text) is None


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
    """The default model scores the fixture's HarmBench, benign and demo rows (the StrongREJECT and
    over-refusal rows would more than double a CPU run). On its own completions (depth k vs full depth)
    the NLL must rank incoherent above coherent; across models it is weaker (loops are cheap to predict,
    another model's template is not), so the AUROC over those rows is printed, not asserted."""
    from engine.coherence import full_depth_nll
    from engine.models import load_model
    from engine.types import GenerationParams

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    items = [item for item in load_fixture() if item["prompt_set"] in ("harmbench-val", "benign", "demo")]
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
            f"with the demo rows {auroc(all_coherent, all_incoherent):.3f}"
        )
    assert auroc(own_coherent, own_incoherent) >= 0.85
