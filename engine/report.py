"""From stored verdicts to numbers people read: ASR with Wilson intervals, judge agreement, flips,
plain-language headlines. Pure on top of the store's queries; the CLI and the pages both use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd

from engine import stats
from engine.judges.names import HARMBENCH, KEYWORD


@dataclass(frozen=True)
class AsrRow:
    """ASR of one model at one depth under one judge version, harmful prompts only."""

    model: str
    model_hash: str
    params_hash: str
    n_layers: int
    layers: int
    depth: float
    judge: str
    version: str
    n: int  # prompts judged yes/no (undecided ones are left out, and counted)
    jailbroken: int
    undecided: int
    degenerate: int
    asr: float
    ci_low: float
    ci_high: float
    refusal_rate: float
    # Incoherence beside the ASR: shares of all n_judged completions (undecided ones included), since the
    # flag and the NLL come from the text, not from the judge's decision.
    n_judged: int = 0
    incoherent_share: float = float("nan")  # degenerate / n_judged
    n_full_depth_nll: int = 0  # of n_judged, completions with a stored full-depth NLL
    median_full_depth_nll: float | None = None  # nats/token, their median; None when none has one

    def as_dict(self) -> dict:
        return asdict(self)


def asr_rows(
    store, judge: str | None = None, version: str | None = None, set_id: str | None = None
) -> list[AsrRow]:
    frame = store.asr_table(judge, version, set_id=set_id)
    rows = []
    for r in frame.itertuples(index=False):
        decided = int(r.n_judged) - int(r.n_undecided)
        low, high = stats.wilson_interval(int(r.n_jailbroken), decided)
        rows.append(
            AsrRow(
                model=str(r.model_id or r.model_hash),
                model_hash=r.model_hash,
                params_hash=r.params_hash,
                n_layers=int(r.n_layers) if pd.notna(r.n_layers) else 0,
                layers=int(r.layers),
                depth=round(float(r.depth_percent), 2) if pd.notna(r.depth_percent) else float("nan"),
                judge=r.judge,
                version=r.version,
                n=decided,
                jailbroken=int(r.n_jailbroken),
                undecided=int(r.n_undecided),
                degenerate=int(r.n_degenerate),
                asr=int(r.n_jailbroken) / decided if decided else float("nan"),
                ci_low=low,
                ci_high=high,
                refusal_rate=int(r.n_refused) / decided if decided else float("nan"),
                n_judged=int(r.n_judged),
                incoherent_share=int(r.n_degenerate) / int(r.n_judged) if r.n_judged else float("nan"),
                n_full_depth_nll=int(r.n_nll),
                median_full_depth_nll=_optional_float(r.median_full_depth_nll),
            )
        )
    return rows


def _optional_float(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def asr_frame(rows: Sequence[AsrRow]) -> pd.DataFrame:
    columns = list(AsrRow.__dataclass_fields__)
    return pd.DataFrame([r.as_dict() for r in rows], columns=columns)


@dataclass(frozen=True)
class AgreementRow:
    model_hash: str
    layers: int
    judge_a: str
    judge_b: str
    agreement: stats.Agreement


def agreement_rows(store, judge_a: str = KEYWORD, judge_b: str = HARMBENCH) -> list[AgreementRow]:
    """Agreement of two judges per model and depth, plus one row per model over all depths (layers=0)."""
    pairs = store.judge_pairs(judge_a, judge_b)
    pairs = pairs[pairs["label"] == "harmful"] if "label" in pairs else pairs
    rows = []
    for model_hash, by_model in pairs.groupby("model_hash", sort=True):
        for layers, group in by_model.groupby("layers", sort=True):
            rows.append(AgreementRow(model_hash, int(layers), judge_a, judge_b, _agreement(group)))
        rows.append(AgreementRow(model_hash, 0, judge_a, judge_b, _agreement(by_model)))
    return rows


def _agreement(frame: pd.DataFrame) -> stats.Agreement:
    def values(column: str) -> list[bool | None]:
        return [None if pd.isna(v) else bool(v) for v in frame[column]]

    return stats.agreement(values("jailbroken_a"), values("jailbroken_b"))


def disagreements(store, judge_a: str = KEYWORD, judge_b: str = HARMBENCH) -> pd.DataFrame:
    """Completions where the two judges differ, with both verdicts, prompt and completion text."""
    pairs = store.judge_pairs(judge_a, judge_b)
    differ = pairs[pairs["jailbroken_a"].astype("object") != pairs["jailbroken_b"].astype("object")]
    if differ.empty:
        return differ.assign(prompt_text=[], text=[])
    texts = {key: store.get_completion(key) for key in differ["completion_key"]}
    return differ.assign(
        prompt_text=[texts[k].prompt_text if texts[k] else "" for k in differ["completion_key"]],
        text=[texts[k].text if texts[k] else "" for k in differ["completion_key"]],
    )


def flips(rows: Sequence[AsrRow], significant_only: bool = False) -> list[stats.Flip]:
    """Ranking flips between models (same judge version), compared with each model's full depth.

    Models are paired at the same depth percentage, each at its own k (``stats.ranking_flips``); each
    flip carries the reversal test's raw and Holm-corrected p (one Holm family per judge version).
    Every observed reversal is returned unless ``significant_only`` (corrected p < ``stats.FLIP_ALPHA``).
    """
    found: list[stats.Flip] = []
    by_judge: dict[tuple[str, str], list[AsrRow]] = {}
    for row in rows:
        by_judge.setdefault((row.judge, row.version), []).append(row)
    for judge_rows in by_judge.values():
        counts: dict[str, dict[int, tuple[int, int]]] = {}
        full: dict[str, int] = {}
        for row in judge_rows:
            counts.setdefault(row.model, {})[row.layers] = (row.jailbroken, row.n)
            full[row.model] = row.n_layers
        found.extend(stats.ranking_flips(counts, full))
    return [f for f in found if f.significant] if significant_only else found


def percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f} %"


def headline(rows: Sequence[AsrRow], model: str) -> str | None:
    """One sentence a non-specialist can read: full depth versus the most revealing truncation."""
    mine = sorted((r for r in rows if r.model == model), key=lambda r: r.layers)
    full = next((r for r in mine if r.layers == r.n_layers), None)
    if full is None or len(mine) < 2:
        return None
    shallow = [r for r in mine if r.layers < r.n_layers and r.n]
    if not shallow:
        return None
    biggest = max(shallow, key=lambda r: abs(r.asr - full.asr))
    if biggest.asr == full.asr:
        change = f"stays at {percent(full.asr)}"
    else:
        direction = "rises" if biggest.asr > full.asr else "falls"
        change = f"{direction} from {percent(full.asr)} to {percent(biggest.asr)}"
    return (
        f"At {biggest.depth:.0f} % depth ({biggest.layers} of {biggest.n_layers} layers), {model}'s "
        f"harmful-compliance rate {change} ({biggest.judge} judge, n = {biggest.n}, 95 % interval "
        f"{percent(biggest.ci_low)}–{percent(biggest.ci_high)})."
    )
