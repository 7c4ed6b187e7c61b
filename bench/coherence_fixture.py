"""Generate the raw (unlabelled) completions behind tests/fixtures/coherence_labelled.jsonl.

Run once; labels (and the ``split``: ``tune`` or ``held-out``) were then added by reading every
completion (see tests/fixtures/README.md). The flag's precision and recall per depth band, on each
part, are printed by ``pytest -s tests/test_degenerate.py``.

    PYTHONPATH=. .venv/bin/python bench/coherence_fixture.py smollm2 /tmp/raw_smollm2.jsonl
    PYTHONPATH=. .venv/bin/python bench/coherence_fixture.py demo /tmp/raw_demo.jsonl
    PYTHONPATH=. .venv/bin/python bench/coherence_fixture.py smollm2-transition /tmp/raw_transition.jsonl
    PYTHONPATH=. .venv/bin/python bench/coherence_fixture.py smollm2-held-out /tmp/raw_held_out.jsonl
    PYTHONPATH=. .venv/bin/python bench/coherence_fixture.py smollm2-held-out-2 /tmp/raw_held_out_2.jsonl
"""

from __future__ import annotations

import json
import sys

from engine.datasets import load_csv, load_prompt_set
from engine.generation import generate
from engine.models import load_model
from engine.types import GenerationParams

SMOLLM_LAYERS = (18, 22, 24, 26, 28, 29, 30)
DEMO_LAYERS = (3, 5, 6, 7, 8)
TRANSITION_LAYERS = (26, 27, 28, 29, 30)  # where SmolLM2 stops making sense, and full depth beside it


def smollm2_prompts():
    # Standard (no context) behaviours, copyright included: the first 18 in file order, plus benign ones.
    harmful = [p for p in load_prompt_set("harmbench-val") if not p.context][:18]
    benign = load_csv("data/benign_prompts.csv")[::7]
    return harmful + benign


def smollm2_extra_prompts():
    # More full-depth (mostly fluent) text: further behaviours and benign prompts.
    first = {p.prompt_id for p in smollm2_prompts()}
    rest = [p for p in load_prompt_set("harmbench-val") if p.prompt_id not in first][:22]
    return rest + [p for p in load_csv("data/benign_prompts.csv") if p.prompt_id not in first][:30]


def transition_prompts():
    # Apart from the rows above: StrongREJECT and over-refusal prompts, spread over each file.
    return load_prompt_set("strongreject")[::13][:24] + load_prompt_set("overrefusal")[::6][:24]


def held_out_prompts():
    # Labelled after the detector was tuned on everything else: its figures are the honest ones.
    return load_prompt_set("strongreject")[6::13][:24] + load_prompt_set("overrefusal")[3::6][:24]


def second_held_out_prompts():
    # Prompts no other batch uses; read and labelled only once detector version 4 was final, and the labels
    # committed before it was run on them.
    return load_prompt_set("strongreject")[3::13][:24] + load_prompt_set("overrefusal")[1::6][:20]


SET_NAMES = {"benign_prompts": "benign", "demo_prompts": "demo"}  # CSV files -> built-in set names

RUNS = {  # name -> (model, prompts, depths)
    "smollm2": ("smollm2-135m-instruct", smollm2_prompts, SMOLLM_LAYERS),
    "smollm2-extra": ("smollm2-135m-instruct", smollm2_extra_prompts, (29, 30)),
    "smollm2-transition": ("smollm2-135m-instruct", transition_prompts, TRANSITION_LAYERS),
    "smollm2-held-out": ("smollm2-135m-instruct", held_out_prompts, TRANSITION_LAYERS),
    # The transition band, full depth beside it, and one deep cut.
    "smollm2-held-out-2": ("smollm2-135m-instruct", second_held_out_prompts, (*TRANSITION_LAYERS, 22)),
    "demo": ("depthscope-demo", lambda: load_csv("data/demo_prompts.csv"), DEMO_LAYERS),
    "demo-shallow": ("depthscope-demo", lambda: load_csv("data/demo_prompts.csv"), (1, 2)),
}


def main(which: str, out_path: str) -> None:
    params = GenerationParams(max_new_tokens=48)
    model, make_prompts, layers = RUNS[which]
    loaded, prompts = load_model(model), make_prompts()
    name = "smollm2" if model.startswith("smollm2") else "demo"
    by_id = {p.text: p for p in prompts}
    n = loaded.n_layers
    with open(out_path, "w", encoding="utf-8") as out:
        for c in generate(loaded, prompts, layers, params):
            prompt = by_id[c.prompt_text]
            row = {
                "text": c.text,
                "source": f"{name} k={c.layers}/{n}",
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.text,
                "prompt_set": SET_NAMES.get(prompt.source, prompt.source),
                "prompt_label": prompt.label,
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
