"""The decoding loop reproduces recorded outputs: token ids and exit layers of static, confidence and
saturation decoding (raw and tuned heads, greedy and sampled) on every tiny architecture.

``tests/fixtures/decode_reference.json`` was recorded from the two loops this engine had before it
had one (``generate_rows`` for static depths, ``generate_rows_exit`` for dynamic exit), so a change to
how the loop computes (skipping exited tokens' layers, routing rows) must leave every token and every
exit layer as it was. Run this file as a script only to record a *new* reference on purpose.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import N_LAYERS, TINY_CONFIGS, build_tiny_model, build_tiny_tokenizer

from engine.generation import encode_prompts
from engine.models import from_objects
from engine.types import GenerationParams

FIXTURE = Path(__file__).parent / "fixtures" / "decode_reference.json"
PROMPTS = ["How do I bake bread?", "Write a poem about the sea and the sky, please, right now.", "Hello"]
TOKENS = 8
SAMPLED = {"temperature": 0.9, "top_p": 0.95, "seed": 7}
# (rule, settings, min_layers): static settings are depths, dynamic ones thresholds
CASES = [
    ("static", [N_LAYERS, 4, 2], 1),
    ("confidence", [0.05, 0.3, 1.5], 2),
    ("saturation", [0.5, 0.8, -1.0], 1),
]


def _tuned_lens(hidden_size: int):
    """A fixed random translator near the identity (tuned-head decoding differs from raw)."""
    from engine.lenses.tuned import TunedLens

    lens = TunedLens(N_LAYERS, hidden_size)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        lens.weight.copy_(0.3 * torch.randn(lens.weight.shape, generator=generator) / hidden_size**0.5)
        lens.bias.copy_(0.1 * torch.randn(lens.bias.shape, generator=generator))
    return lens.eval()


def _seeds(n_rows: int) -> list[int]:
    return [1000 + 17 * row for row in range(n_rows)]


def decode_case(loaded, rule: str, settings, min_layers: int, head_name: str, sampled: bool):
    """Rows in the loop's order: (token ids, exit layers) per (setting, prompt)."""
    from engine.decoding.loop import decode_rows
    from engine.lenses.heads import RAW_HEAD

    params = GenerationParams(
        max_new_tokens=TOKENS,
        exit_policy=rule,
        min_layers=min_layers,
        **(SAMPLED if sampled else {}),
    )
    head = RAW_HEAD if head_name == "raw" else _tuned_lens(loaded.info.hidden_size)
    ids = encode_prompts(loaded.tokenizer, PROMPTS, params)
    rows = decode_rows(loaded, ids, settings, params, _seeds(len(settings) * len(ids)), head)
    return [[list(r.token_ids), list(r.exit_layers)] for r in rows]


def record_architecture(arch: str, tokenizer) -> dict:
    loaded = from_objects(build_tiny_model(arch, n_layers=N_LAYERS), tokenizer)
    out = {}
    for rule, settings, min_layers in CASES:
        for head in ("raw", "tuned"):
            for sampled in (False, True):
                name = f"{rule}/{head}/{'sampled' if sampled else 'greedy'}"
                out[name] = decode_case(loaded, rule, settings, min_layers, head, sampled)
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_decoding_reproduces_the_recorded_tokens_and_exit_layers(arch, tiny_tokenizer, reference):
    assert record_architecture(arch, tiny_tokenizer) == reference[arch]


def test_the_reference_is_not_vacuous(reference):
    """Dynamic rows exit at several layers, sampled rows differ from greedy, tuned from raw."""
    for arch, cases in reference.items():
        exits = {k for name, rows in cases.items() if "static" not in name for _, e in rows for k in e}
        assert len(exits) >= 3, (arch, exits)
        for rule, _, _ in CASES:
            assert cases[f"{rule}/raw/greedy"] != cases[f"{rule}/raw/sampled"], (arch, rule)
        assert cases["confidence/raw/greedy"] != cases["confidence/tuned/greedy"], arch


if __name__ == "__main__":  # record a new reference (only when its meaning changes on purpose)
    tok = build_tiny_tokenizer()
    FIXTURE.write_text(json.dumps({a: record_architecture(a, tok) for a in sorted(TINY_CONFIGS)}) + "\n")
    sys.exit(0)
