"""How well the full-depth NLL separates the labelled fixture: AUROC, medians, and NLL vs the flag.

    PYTHONPATH=. .venv/bin/python bench/coherence_nll.py [scores.jsonl]   # score and report
    PYTHONPATH=. .venv/bin/python bench/coherence_nll.py --from scores.jsonl   # report saved scores

Scores every completion in tests/fixtures/coherence_labelled.jsonl with the default model at full depth
(texts re-tokenized with its tokenizer: the demo model's text came from another tokenizer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.coherence import full_depth_token_nll
from engine.judges import is_degenerate
from engine.models import load_model
from engine.types import GenerationParams

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "coherence_labelled.jsonl"


def auroc(negatives: list[float], positives: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


AGGREGATES = {  # name -> per-token NLLs -> one score (higher = less fluent)
    "mean NLL": lambda v: sum(v) / len(v),
    "mean NLL, first 8 tokens": lambda v: sum(v[:8]) / len(v[:8]),
    "share of tokens with NLL > 4": lambda v: sum(x > 4 for x in v) / len(v),
}


def main(out_path: str | None) -> None:
    items = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line]
    loaded = load_model("smollm2-135m-instruct", device="cpu")
    ids = [loaded.tokenizer(item["text"], add_special_tokens=False)["input_ids"] for item in items]
    params = GenerationParams(max_new_tokens=48)
    per_token = full_depth_token_nll(loaded, [i["prompt"] for i in items], ids, params)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as out:
            for item, values in zip(items, per_token, strict=True):
                out.write(
                    json.dumps({"source": item["source"], "label": item["label"], "nll": values}) + "\n"
                )
    report(items, per_token)


def report(items: list[dict], per_token: list[list[float]]) -> None:
    smollm = [i["source"].startswith("smollm2") for i in items]
    for name, aggregate in AGGREGATES.items():
        scores = [aggregate(v) for v in per_token]
        for subset, keep in (("all", [True] * len(items)), ("SmolLM2 only", smollm)):
            coh = sorted(
                s for s, i, k in zip(scores, items, keep, strict=True) if k and i["label"] == "coherent"
            )
            inc = sorted(
                s for s, i, k in zip(scores, items, keep, strict=True) if k and i["label"] == "incoherent"
            )
            print(f"{name:<30} {subset:<13} n={len(coh)}+{len(inc)}  median coherent {coh[len(coh) // 2]:.2f}"
                  f"  incoherent {inc[len(inc) // 2]:.2f}  AUROC {auroc(coh, inc):.3f}")  # fmt: skip
    means = [sum(v) / len(v) for v in per_token]
    missed = [
        m
        for m, i in zip(means, items, strict=True)
        if i["label"] == "incoherent" and not is_degenerate(i["text"])
    ]
    print(
        f"mean NLL of the {len(missed)} incoherent items the flag misses: "
        f"{sorted(round(m, 2) for m in missed)}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2:  # re-report saved scores: coherence_nll.py --from scores.jsonl
        saved = [json.loads(line) for line in Path(sys.argv[2]).read_text().splitlines()]
        fixture = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line]
        report(fixture, [row["nll"] for row in saved])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
