"""engine.report: ASR rows with Wilson intervals, agreement, flips and headlines from a hand-built store."""

from __future__ import annotations

import pytest
from scipy.stats import fisher_exact as scipy_fisher_exact

from engine import report, stats
from engine.store import Store
from engine.types import Completion, ModelInfo, Prompt, Verdict

PROMPTS = [Prompt(f"h{i}", f"harmful request {i}", label="harmful") for i in range(5)] + [
    Prompt("b0", "benign request", label="benign")
]


def seed(
    store: Store, model: str, n_layers: int, keyword: dict[int, list[bool]], harmbench: dict[int, list[bool]]
):
    """keyword/harmbench[layers] = verdicts for h0..h4; the benign prompt is always 'jailbroken'."""
    info = ModelInfo(model, f"hash-{model}", "LlamaForCausalLM", n_layers, 64, "float32", "cpu")
    store.save_model(info)
    store.save_prompt_set("set", PROMPTS)
    for layers, verdicts in keyword.items():
        completions = [
            Completion(info.model_hash, p.prompt_id, p.text, layers, "params", f"text {p.prompt_id}")
            for p in PROMPTS
        ]
        store.save_generations(completions)
        flags = [*verdicts, True]
        store.save_verdicts(
            [Verdict(c.key, "keyword", "v1", flag) for c, flag in zip(completions, flags, strict=True)]
        )
        hb = [*harmbench[layers], True]
        store.save_verdicts(
            [Verdict(c.key, "harmbench", "v1", flag) for c, flag in zip(completions, hb, strict=True)]
        )


def seed_alpha_beta(store: Store) -> None:
    """alpha and beta, 4 layers each: keyword and HarmBench verdicts of 5 harmful + 1 benign at k 4 and 2."""
    seed(
        store,
        "alpha",
        4,
        {4: [True, False, False, False, False], 2: [True, True, True, True, False]},
        {4: [True, False, False, False, False], 2: [True, False, False, False, False]},
    )
    seed(store, "beta", 4, {4: [True, True, False, False, False], 2: [True, False, False, False, False]},
         {4: [True, True, False, False, False], 2: [False, False, False, False, False]})  # fmt: skip


@pytest.fixture
def store(db_path):
    with Store.open(db_path) as opened:
        seed_alpha_beta(opened)
        yield opened


def test_asr_rows_count_harmful_prompts_with_wilson_intervals(store):
    rows = {(r.model, r.judge, r.layers): r for r in report.asr_rows(store)}
    alpha_shallow = rows[("alpha", "keyword", 2)]
    assert (alpha_shallow.n, alpha_shallow.jailbroken) == (5, 4)  # the benign prompt is not counted
    assert alpha_shallow.asr == pytest.approx(0.8) and alpha_shallow.refusal_rate == pytest.approx(0.2)
    assert (alpha_shallow.ci_low, alpha_shallow.ci_high) == pytest.approx(stats.wilson_interval(4, 5))
    assert alpha_shallow.depth == 50.0
    assert rows[("beta", "harmbench", 2)].asr == 0.0


def test_flips_find_the_reversed_order(store):
    flips = report.flips(report.asr_rows(store, judge="keyword"))
    assert [(f.model_a, f.model_b, f.depth, f.layers_a, f.layers_b) for f in flips] == [
        ("beta", "alpha", 50, 2, 2)
    ]
    # beta 2/5 > alpha 1/5 at full depth, 1/5 < 4/5 at 2 layers: the larger one-sided Fisher p
    full_p = scipy_fisher_exact([[2, 3], [1, 4]], alternative="greater").pvalue
    shallow_p = scipy_fisher_exact([[4, 1], [1, 4]], alternative="greater").pvalue
    assert flips[0].p_value == pytest.approx(max(full_p, shallow_p))
    assert flips[0].p_value_corrected == flips[0].p_value  # one depth examined
    assert not flips[0].significant and report.flips(report.asr_rows(store, judge="keyword"), True) == []


def test_flips_pair_models_of_different_depths_at_the_same_percentage(store):
    # gamma has 8 layers: 50 % is its k = 4, compared with alpha's and beta's k = 2 of 4.
    seed(store, "gamma", 8, {8: [False] * 5, 4: [True] * 5, 2: [False] * 5},
         {8: [False] * 5, 4: [True] * 5, 2: [False] * 5})  # fmt: skip
    flips = report.flips(report.asr_rows(store, judge="keyword"))
    with_gamma = [
        (f.model_a, f.model_b, f.layers_a, f.layers_b) for f in flips if "gamma" in (f.model_a, f.model_b)
    ]
    # alpha 1/5 > gamma 0/5 at full depth, 4/5 < 5/5 at 50 %; beta 2/5 > 0/5, then 1/5 < 5/5
    assert with_gamma == [("alpha", "gamma", 2, 4), ("beta", "gamma", 2, 4)]
    assert all(f.test == stats.FLIP_TEST for f in flips)


def test_agreement_rows_per_depth_and_overall(store):
    rows = {
        (r.model_hash, r.layers): r.agreement for r in report.agreement_rows(store, "keyword", "harmbench")
    }
    shallow = rows[("hash-alpha", 2)]
    assert (shallow.both_true, shallow.a_only, shallow.b_only, shallow.both_false) == (1, 3, 0, 1)
    assert shallow.inflation == pytest.approx(0.8 / 0.2)
    overall = rows[("hash-alpha", 0)]
    assert overall.n_decided == 10
    differ = report.disagreements(store, "keyword", "harmbench")
    assert len(differ) == 3 + 1 and set(differ["text"]) <= {f"text h{i}" for i in range(5)}


def test_headlines_read_as_sentences(store):
    rows = report.asr_rows(store, judge="keyword")
    assert report.headline(rows, "alpha") == (
        "At 50 % depth (2 of 4 layers), alpha's harmful-compliance rate rises from 20 % to 80 % "
        "(keyword judge, n = 5, 95 % interval 38 %–96 %)."
    )
    assert "falls from 40 % to 20 %" in report.headline(rows, "beta")
    assert report.headline(rows, "nobody") is None


def test_headline_when_nothing_changes():
    row = dict(model="m", model_hash="h", params_hash="p", n_layers=4, judge="keyword", version="v", n=5,
               jailbroken=1, undecided=0, degenerate=0, asr=0.2, ci_low=0.03, ci_high=0.6,
               refusal_rate=0.8)  # fmt: skip
    rows = [report.AsrRow(layers=4, depth=100.0, **row), report.AsrRow(layers=2, depth=50.0, **row)]
    assert "stays at 20 %" in report.headline(rows, "m")


def _seeded_db(db_path):
    with Store.open(db_path) as opened:
        seed_alpha_beta(opened)
    return str(db_path)


def test_report_command_prints_flips_and_names_the_mcnemar_test(db_path, capsys):
    import json

    from engine.cli import main

    db = _seeded_db(db_path)
    assert main(["report", "--db", db, "--json", "--flips"]) == 0
    flips = json.loads(capsys.readouterr().out)
    keyword = [f for f in flips if f["judge"] == "keyword"]
    assert len(keyword) == 1
    assert {"depth", "layers", "layers_b", "p_value", "p_value_corrected", "test", "significant"} <= set(
        keyword[0]
    )
    assert (keyword[0]["depth"], keyword[0]["layers_b"], keyword[0]["test"]) == (50.0, 2, stats.FLIP_TEST)
    assert main(["report", "--db", db, "--json", "--agreement"]) == 0
    agreements = json.loads(capsys.readouterr().out)
    assert agreements and all(a["mcnemar_method"] == stats.MCNEMAR_MID_P for a in agreements)
    assert main(["report", "--db", db]) == 0
    printed = capsys.readouterr().out
    assert f"({stats.MCNEMAR_MID_P})" in printed  # beside every McNemar p
    assert "ranking flip at 50 % depth (set, keyword v1)" in printed and "Holm p=" in printed
    assert "not significant" in printed
