"""How well the full-depth NLL separates the labelled fixture: AUROC, medians, and NLL vs the flag.

    PYTHONPATH=. .venv/bin/python bench/coherence_nll.py [scores.jsonl]

Scores every completion in tests/fixtures/coherence_labelled.jsonl with the default model at full depth
(texts re-tokenized with its tokenizer: the demo model's text came from another tokenizer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.coherence import full_depth_nll
from engine.judges import is_degenerate
from engine.models import load_model
from engine.types import GenerationParams

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "coherence_labelled.jsonl"


def auroc(negatives: list[float], positives: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def main(out_path: str | None) -> None:
    items = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line]
    loaded = load_model("smollm2-135m-instruct", device="cpu")
    ids = [loaded.tokenizer(item["text"], add_special_tokens=False)["input_ids"] for item in items]
    scores = full_depth_nll(loaded, [i["prompt"] for i in items], ids, GenerationParams(max_new_tokens=48))
    if out_path:
        with open(out_path, "w", encoding="utf-8") as out:
            for item, score in zip(items, scores, strict=True):
                out.write(json.dumps({"source": item["source"], "label": item["label"], "nll": score}) + "\n")
    by_label = {"coherent": [], "incoherent": []}
    for item, score in zip(items, scores, strict=True):
        by_label[item["label"]].append(score)
    for label, values in by_label.items():
        values.sort()
        print(f"{label}: n={len(values)} median {values[len(values) // 2]:.2f} "
              f"p10 {values[len(values) // 10]:.2f} p90 {values[9 * len(values) // 10]:.2f}")  # fmt: skip
    print(f"AUROC (incoherent scored higher): {auroc(by_label['coherent'], by_label['incoherent']):.3f}")
    smollm = [(s, i) for s, i in zip(scores, items, strict=True) if i["source"].startswith("smollm2")]
    coh = [s for s, i in smollm if i["label"] == "coherent"]
    inc = [s for s, i in smollm if i["label"] == "incoherent"]
    print(f"AUROC on SmolLM2 items only ({len(coh)} + {len(inc)}): {auroc(coh, inc):.3f}")
    missed = [
        s
        for s, i in zip(scores, items, strict=True)
        if i["label"] == "incoherent" and not is_degenerate(i["text"])
    ]
    print(f"NLL of the {len(missed)} incoherent items the flag misses: {sorted(round(m, 2) for m in missed)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
