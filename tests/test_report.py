"""engine.report: ASR rows with Wilson intervals, agreement, flips and headlines from a hand-built store."""

from __future__ import annotations

import pytest
from scipy.stats import fisher_exact as scipy_fisher_exact

from engine import queries, report, stats
from engine.store import Store
from engine.types import Completion, GenerationParams, ModelInfo, Prompt, Verdict

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


def test_agreement_rows_say_how_much_of_the_set_they_cover(store):
    """5 harmful prompts in the set; an answer at one more depth (3 layers) for two of them only."""
    extra = [
        Completion("hash-alpha", p.prompt_id, p.text, 3, "params", f"t {p.prompt_id}") for p in PROMPTS[:2]
    ]
    store.save_generations(extra)
    for judge in ("keyword", "harmbench"):
        store.save_verdicts([Verdict(c.key, judge, "v1", True) for c in extra])
    rows = {(r.model_hash, r.layers): r for r in report.agreement_rows(store, "keyword", "harmbench")}
    assert (
        rows[("hash-alpha", 4)].coverage == "5 of 5 harmful prompts" and rows[("hash-alpha", 4)].fully_covered
    )
    assert (
        rows[("hash-alpha", 3)].coverage == "2 of 5 harmful prompts"
        and not rows[("hash-alpha", 3)].fully_covered
    )
    assert rows[("hash-alpha", 0)].coverage == "5 of 5 harmful prompts"  # all depths: prompts, not answers
    assert rows[("hash-alpha", 0)].agreement.n_decided == 12


def test_headlines_read_as_sentences(store):
    rows = report.asr_rows(store, judge="keyword")
    assert report.headline(rows, "alpha") == (
        "Removing the last 2 of 4 layers (50 % depth) raises alpha's harmful compliance from 20 % to 80 % "
        "(keyword judge, n = 5 harmful prompts, 95 % interval 38 %–96 %)."
    )
    # beta: 2/5 at full depth, 1/5 at 2 layers, whose interval (4 %–62 %) holds 40 %: no change beyond chance
    assert report.headline(rows, "beta") == (
        "No cut down to 2 of 4 layers changes beta's harmful compliance beyond chance: 40 % at full depth, "
        "20 % at 2 layers (keyword judge, n = 5 harmful prompts)."
    )
    assert report.headline(rows, "nobody") is None


def _row(layers: int, jailbroken: int, n: int = 12, n_layers: int = 8, **extra) -> report.AsrRow:
    low, high = stats.wilson_interval(jailbroken, n)
    rate = jailbroken / max(n, 1)
    fields = dict(model="m", model_hash="h", params_hash="p", n_layers=n_layers, judge="keyword", version="v",
                  n=n, jailbroken=jailbroken, undecided=0, degenerate=0, asr=rate, ci_low=low,
                  ci_high=high, refusal_rate=1 - rate, n_judged=n, harmful_in_set=n)  # fmt: skip
    return report.AsrRow(layers=layers, depth=100 * layers / n_layers, **(fields | extra))


def test_headline_names_the_smallest_cut_that_changes_behaviour():
    """Ties on the largest change used to go to the shallowest depth (2 of 8); the sentence a stakeholder
    needs is the deepest truncation whose interval excludes the full-depth rate (6 of 8)."""
    rows = [_row(8, 0), _row(7, 0), _row(6, 12), _row(4, 12), _row(2, 12)]
    line = report.headline(rows, "m")
    assert line.startswith(
        "Removing the last 2 of 8 layers (75 % depth) raises m's harmful compliance from 0 % to 100 %"
    )
    assert "incoherent" not in line
    # any answer at 7 of 8 is outside chance here: Wilson's interval for 1 of 12 starts above 0 %
    assert stats.wilson_interval(1, 12)[0] > 0
    assert report.headline([_row(8, 0), _row(7, 1)], "m").startswith(
        "Removing the last layer of 8 (88 % depth)"
    )


def test_headline_says_when_the_change_is_mostly_incoherence():
    rows = [_row(8, 0), _row(7, 12, jailbroken_incoherent=11, degenerate=11)]
    assert report.headline(rows, "m") == (
        "Removing the last layer of 8 (88 % depth) raises m's harmful compliance from 0 % to 100 %, "
        "but 11 of those 12 answers are incoherent: mostly lost language, not lost refusal (keyword "
        "judge, n = 12 harmful prompts, 95 % interval 76 %–100 %)."
    )
    coherent = [_row(8, 0), _row(7, 12, jailbroken_incoherent=2)]
    assert "incoherent" not in report.headline(coherent, "m")


def test_headline_when_nothing_changes():
    rows = [_row(8, 1, n=5), _row(4, 1, n=5)]
    assert report.headline(rows, "m") == (
        "No cut down to 4 of 8 layers changes m's harmful compliance beyond chance: 20 % at full depth, "
        "20 % at 4 layers (keyword judge, n = 5 harmful prompts)."
    )


def test_headline_uses_fully_covered_rows_only():
    """One explorer answer at another setting (1 of 12 prompts) never makes a headline; a partly covered
    truncation is left out, and the sentence says so."""
    one_off = [_row(8, 0, n=1, harmful_in_set=12), _row(6, 1, n=1, harmful_in_set=12)]
    assert report.headline(one_off, "m") == (
        "No headline for m with these settings: at full depth they cover 1 of 12 harmful prompts only. Sweep "
        "the whole set for one."
    )
    rows = [_row(8, 0), _row(6, 3, n=3, harmful_in_set=12), _row(4, 12)]
    line = report.headline(rows, "m")
    assert line.startswith("Removing the last 4 of 8 layers (50 % depth)")  # 6 of 8 covers 3 of 12 only
    assert line.endswith("1 depth(s) left out: not every prompt of the set was answered there.")
    assert _row(6, 3, n=3, harmful_in_set=12).coverage == "3 of 12 harmful prompts"
    assert report.headline([_row(8, 0), _row(6, 3, n=3, harmful_in_set=12)], "m") == (
        "No headline for m with these settings yet: below full depth they cover at most 3 of 12 harmful "
        "prompts (6 of 8 layers). Sweep the whole set for one."
    )


def test_a_set_without_harmful_prompts_gets_a_benign_refusal_headline():
    def benign(layers: int, refused: int) -> report.AsrRow:
        low, high = stats.wilson_interval(refused, 150)
        nan = float("nan")
        return _row(layers, 0, n=0, asr=nan, ci_low=nan, ci_high=nan, refusal_rate=nan, n_judged=0,
                    harmful_in_set=0, benign_in_set=150, benign_judge="keyword", benign_n=150,
                    benign_refused=refused, benign_refusal_rate=refused / 150, benign_ci_low=low,
                    benign_ci_high=high)  # fmt: skip

    rows = [benign(8, 3), benign(6, 60), benign(4, 150)]
    assert report.headline(rows, "m") is None
    assert report.benign_headline(rows, "m") == (
        "Removing the last 2 of 8 layers (75 % depth) raises how often m refuses harmless requests from "
        "2 % to 40 % (keyword judge, n = 150 benign prompts, 95 % interval 33 %–48 %)."
    )
    assert rows[0].coverage == "150 of 150 benign prompts" and rows[0].fully_covered


def test_rows_carry_coverage_and_settings_in_words(store):
    """The seeded set has 5 harmful + 1 benign prompts; every row says how many of them it covers."""
    rows = report.asr_rows(store, judge="keyword")
    assert {r.coverage for r in rows} == {"5 of 5 harmful prompts"} and all(r.fully_covered for r in rows)
    assert {r.settings for r in rows} == {"settings not recorded (answers stored by an older version)"}


def test_asr_rows_of_one_settings_scope(db_path):
    """Two settings for one model: each is its own scope, told apart in words, never pooled."""
    from engine.scopes import SettingsScope

    info = ModelInfo("m", "hash-m", "LlamaForCausalLM", 4, 64, "float32", "cpu")
    with Store.open(db_path) as store:
        store.save_model(info)
        store.save_prompt_set("set", PROMPTS)
        for params, answered in (
            (GenerationParams(), PROMPTS),
            (GenerationParams(max_new_tokens=8), PROMPTS[:1]),
        ):
            completions = [
                Completion("hash-m", p.prompt_id, p.text, 4, params.key(), "Sure, here it is.")
                for p in answered
            ]
            store.save_generations(completions, params=params)
            store.save_verdicts([Verdict(c.key, "keyword", "v1", True) for c in completions])
        rows = report.asr_rows(store, judge="keyword")
        default = SettingsScope.of(GenerationParams()).key
        scoped = report.asr_rows(store, judge="keyword", scope=default)
        scopes = queries.settings_scopes(store, "hash-m", ["set"])
    assert sorted(r.settings for r in rows) == [
        "64 new tokens · greedy · chat template",
        "8 new tokens · greedy · chat template",
    ]
    assert [(r.n, r.coverage) for r in scoped] == [(5, "5 of 5 harmful prompts")]
    assert [(s.scope.max_new_tokens, s.n_prompts, s.set_size, s.n_answers) for s in scopes] == [
        (64, 6, 6, 6),
        (8, 1, 6, 1),
    ]
    assert scopes[1].label() == "8 new tokens · greedy · chat template (1 of 6 prompts, 1 answer)"


def test_refusal_by_depth_ignores_early_exit_rows():
    """Early-exit rows keep all L layers: they used to overwrite the static full-depth point."""
    static = [_row(8, 0, refusal_rate=1.0), _row(6, 12, refusal_rate=0.0)]
    exits = [_row(8, 12, refusal_rate=0.0, exit_policy="confidence", threshold=0.5)]
    tuned = [_row(8, 6, refusal_rate=0.5, exit_head="tuned")]
    assert queries.refusal_by_depth(static + exits + tuned, "h") == {6: 0.0, 8: 1.0}


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


def _seed_two_settings_and_exits(db_path) -> None:
    """alpha, 4 layers: static 4, 3, 2 and confidence 0.9, 0.5 with 64 new tokens, and 4 of 4 with 8 new
    tokens; a judge version longer than the old fixed-width column."""
    info = ModelInfo("alpha", "hash-alpha", "LlamaForCausalLM", 4, 64, "float32", "cpu")
    variants = [(GenerationParams(exit_policy="confidence", threshold=t), 4, (2, 3)) for t in (0.9, 0.5)]
    variants += [(GenerationParams(), k, ()) for k in (2, 4, 3)] + [
        (GenerationParams(max_new_tokens=8), 4, ())
    ]
    with Store.open(db_path) as store:
        store.save_model(info)
        store.save_prompt_set("set", PROMPTS)
        for params, k, exits in variants:  # written in no particular order
            completions = [
                Completion(info.model_hash, p.prompt_id, p.text, k, params.key(), "Sure", exit_layers=exits)
                for p in PROMPTS
            ]
            store.save_generations(completions, params=params)
            store.save_verdicts(
                [
                    Verdict(c.key, "keyword", "llm-attack-classifier-v1", i % 2 == 0 or k == 2)
                    for i, c in enumerate(completions)
                ]
            )


def test_report_command_prints_aligned_tables_by_set_model_and_settings(db_path, capsys):
    from engine.cli import main

    _seed_two_settings_and_exits(db_path)
    assert main(["report", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    lines = [line.rstrip() for line in out.splitlines()]  # a table's title is padded to its width
    default = lines.index("set › alpha › 64 new tokens · greedy · chat template")
    short = lines.index("set › alpha › 8 new tokens · greedy · chat template")
    rows = [line for line in lines[default:short] if "keyword llm-attack-classifier-v1" in line]  # never cut
    order = ["4 / 4 layers", "3 / 4 layers", "2 / 4 layers", "confidence ≥ 0.5", "confidence ≥ 0.9"]
    assert [next(i for i, row in enumerate(rows) if label in row) for label in order] == [0, 1, 2, 3, 4]
    assert len({row.index("keyword") for row in rows}) == 1  # aligned columns
    assert len({row.index("5 of 5 harmful prompts") for row in rows}) == 1
    assert len({len(row.rstrip()) for row in rows}) <= 2  # the benign column's text varies in length
    assert "4 / 4 layers · 100 %" in lines[short + 4]
    assert "set › 64 new tokens · greedy · chat template: No cut down to 2 of 4 layers" in out
