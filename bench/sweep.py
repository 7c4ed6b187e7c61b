"""Sweep throughput: DepthScope's depth-shared batched decoding vs two baselines, and early exit.

All run in one process on the same random model and prompts, side by side, so a noisy machine still
gives a fair ratio. Baselines:
- the naive loop (the seed study's): for each depth, patch the model to k layers, then for each prompt
  call HF ``generate`` alone;
- the competent one: for each distinct depth, one HF ``generate`` batched over all prompts (left
  padding).
The completions must be identical. ``--early-exit`` adds per-token exit (confidence and saturation
rules, raw head) against the static full-depth batch: tokens/s ratio, counted compute fraction c and
the realisation (ratio × c), whole runs and decoding steps only (the full-depth prefill taken out),
and the ceiling a loop with no routing or scoring overhead would reach for the same exits on this
machine, from per-step costs measured here (``bench/exit_ceiling.py``).

Timing is robust on a shared machine: one warm-up call each, then ``--rounds`` interleaved rounds
(A B C … A B C …) and the median ratio with its min–max over the rounds.

    python bench/sweep.py [--quick] [--preset cpu|7b] [--prompts N] [--max-new-tokens N] [--early-exit]
                          [--rounds N]

The last lines are ``speedup_vs_batched_generate: X (min–max)`` and ``speedup_vs_naive: X (min–max)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from exit_ceiling import ceiling, compute_fractions, measure_costs, rows_per_layer, step_exits  # noqa: E402
from timing import interleaved, spread  # noqa: E402

from engine.depths import DEFAULT_DEPTHS, layers_from_percent  # noqa: E402
from engine.generation import encode_prompts, generate, left_pad  # noqa: E402
from engine.models import LoadedModel, from_objects, truncated  # noqa: E402
from engine.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from engine.types import GenerationParams  # noqa: E402

TOPICS = ["bread", "the sea", "a bicycle", "tax forms", "a garden", "chess", "volcanoes", "a birthday party"]
FORMS = [
    "Explain {t} to a child.",
    "Write a short poem about {t}, with a rhyme in every line and a twist at the end.",
    "What is {t}?",
    "Give me three facts about {t} that most people do not know, and say where they come from.",
]


def bench_prompts(n: int) -> list[str]:
    return [
        FORMS[i % len(FORMS)].format(t=TOPICS[(i // len(FORMS)) % len(TOPICS)]) + f" ({i})" for i in range(n)
    ]


def build_model(preset: str, device: str) -> LoadedModel:
    tokenizer = build_tiny_tokenizer(vocab_size=2000, corpus=bench_prompts(64) * 4)
    if preset == "7b":  # a real 7B Llama shape with random weights
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(
            "llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            max_position_embeddings=4096,
            eos_token_id=2,
        )
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    else:
        model = build_tiny_model("llama", n_layers=8, hidden_size=256, vocab_size=len(tokenizer))
    return from_objects(model.to(device), tokenizer, model_id=f"random-{preset}")


def naive_loop(
    loaded: LoadedModel, prompts: list[str], layer_list: list[int], params: GenerationParams
) -> dict:
    """One prompt and one depth per HF generate call, the model patched by a context manager."""
    eos = loaded.tokenizer.eos_token_id
    out = {}
    encoded = encode_prompts(loaded.tokenizer, prompts, params)
    with torch.inference_mode():
        for k in layer_list:
            with truncated(loaded, k):
                for text, ids in zip(prompts, encoded, strict=True):
                    tensor = torch.tensor([ids], device=loaded.device)
                    generated = loaded.model.generate(
                        tensor,
                        attention_mask=torch.ones_like(tensor),
                        max_new_tokens=params.max_new_tokens,
                        do_sample=False,
                        eos_token_id=list(loaded.eos_token_ids),
                        pad_token_id=eos,
                    )[0, len(ids) :].tolist()
                    cut = next(
                        (i + 1 for i, t in enumerate(generated) if t in loaded.eos_token_ids), len(generated)
                    )
                    out[(text, k)] = tuple(generated[:cut])
    return out


def batched_generate(
    loaded: LoadedModel, prompts: list[str], layer_list: list[int], params: GenerationParams
) -> dict:
    """The competent baseline: one HF generate per distinct depth, batched over all prompts."""
    pad = loaded.tokenizer.pad_token_id
    ids, mask = left_pad(encode_prompts(loaded.tokenizer, prompts, params), pad, loaded.device)
    out = {}
    with torch.inference_mode():
        for k in dict.fromkeys(layer_list):
            with truncated(loaded, k):
                generated = loaded.model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=params.max_new_tokens,
                    do_sample=False,
                    eos_token_id=list(loaded.eos_token_ids),
                    pad_token_id=pad,
                )[:, ids.shape[1] :].tolist()
            for text, tokens in zip(prompts, generated, strict=True):
                cut = next((i + 1 for i, t in enumerate(tokens) if t in loaded.eos_token_ids), len(tokens))
                out[(text, k)] = tuple(tokens[:cut])
    return out


EXIT_CASES = [("confidence", 0.5, 4), ("confidence", 0.9, 4), ("saturation", 0.9, 1)]  # min layers of 8
# A random 7B never grows confident and its top token never changes after the first layer, so every
# saturation exit lands on the minimum layer: the minimum sets c exactly (16/32 = 0.5, 24/32 = 0.75),
# which measures what the loop realises for a known exit depth; confidence shows the head's overhead.
EXIT_CASES_7B = [("confidence", 0.5, 4), ("saturation", 0.9, 16), ("saturation", 0.9, 24)]


def row_counts(n_rows: int) -> list[int]:
    """Batch sizes the per-step costs are measured at: from one row to the bench's own (a step's layers
    above the first exits run on anything from a few rows to all of them)."""
    return sorted(
        {max(1, round(n_rows * share)) for share in (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)}
    )


def early_exit_case(
    loaded: LoadedModel, prompts: list[str], params: GenerationParams, rounds: int, cases: list[tuple]
) -> None:
    """Per rule setting: tokens/s relative to the static full-depth batch (interleaved rounds), the counted
    compute fraction c (mean exit layer ÷ L) and the realisation (tokens/s ratio × c; 1.0 = the whole
    counted saving shows up in wall time).

    Also the same with the prompt's prefill taken out (each contender's time minus its own 1-token run
    in the same round): every rule runs the prompt at full depth, so that share of the wall time can
    never shrink, and the decode-only figures show what the loop itself realises.

    Then the ceiling for the same exits (``exit_ceiling``): what this machine's measured layer and
    keys/values costs allow at best, and the share of it the loop realises."""
    n_layers, n_rows = loaded.n_layers, len(prompts)
    first_only = replace(params, max_new_tokens=1)
    counts = row_counts(n_rows)
    costs = None  # a per-row cost needs two batch sizes, a per-step cost two tokens
    if len(counts) > 1 and params.max_new_tokens > 1:
        costs = measure_costs(loaded, bench_prompts, params, rounds, counts)
        print(f"measured per-step costs (static truncation, EOS off, interleaved): {costs.describe()}")
    else:
        print("no ceiling: measuring per-step costs needs at least 2 prompts and 2 new tokens")
    full = generate(loaded, prompts, [n_layers], params)
    static_exits = [[n_layers] * len(c.token_ids) for c in full]
    full_tokens = sum(len(c.token_ids) for c in full)
    generate(loaded, prompts, [n_layers], first_only)
    for policy, threshold, min_layers in cases:
        exit_params = replace(params, exit_policy=policy, threshold=threshold, min_layers=max(1, min_layers))
        done = generate(loaded, prompts, [], exit_params)
        generate(loaded, prompts, [], replace(exit_params, max_new_tokens=1))
        tokens = sum(len(c.token_ids) for c in done)
        exits = [list(x.exit_layers) for x in done]
        c, c_later = compute_fractions(exits, n_layers)  # every token; the decoding steps' tokens
        seconds = interleaved(
            {
                "static": lambda: generate(loaded, prompts, [n_layers], params),
                "exit": lambda exit_params=exit_params: generate(loaded, prompts, [], exit_params),
                "static first": lambda: generate(loaded, prompts, [n_layers], first_only),
                "exit first": lambda exit_params=exit_params: generate(
                    loaded, prompts, [], replace(exit_params, max_new_tokens=1)
                ),
            },
            rounds,
            warm_up=False,  # all just ran once above
        )
        pairs = list(zip(seconds["static"], seconds["exit"], strict=True))
        ratios = [(tokens / e) / (full_tokens / s) for s, e in pairs]
        firsts = list(zip(seconds["static first"], seconds["exit first"], strict=True))
        decode_ratios = [
            ((tokens - n_rows) / (e - e1)) / ((full_tokens - n_rows) / (s - s1))
            for (s, e), (s1, e1) in zip(pairs, firsts, strict=True)
        ]
        prefill_share = [s1 / s for s, s1 in zip(seconds["static"], seconds["static first"], strict=True)]
        print(
            f"early exit {policy} λ={threshold} m={exit_params.min_layers}: c = {c:.2f} (mean exit layer "
            f"{c * n_layers:.2f}/{n_layers}); tokens/s vs static full depth {spread(ratios)}; "
            f"realisation {spread([r * c for r in ratios])}"
        )
        print(
            f"  decoding steps only (prefill {spread(prefill_share)} of the static run's time, taken out): "
            f"c = {c_later:.2f}; tokens/s vs static {spread(decode_ratios)}; "
            f"realisation {spread([r * c_later for r in decode_ratios])}"
        )
        if costs is None or not any(len(e) > 1 for e in exits):
            continue
        best, best_decoding = ceiling(
            exits, static_exits, n_layers, costs, statistics.median(seconds["static first"])
        )
        running = " ".join(f"{r:.1f}" for r in rows_per_layer(step_exits(exits), n_layers))
        realised = statistics.median([r * c for r in ratios])
        print(
            f"  ceiling (a loop with no routing or scoring overhead, these exits, the costs above): "
            f"realisation {best:.2f}, decoding steps only {best_decoding:.2f}; the loop realises "
            f"{realised / best:.2f} of it; rows running layer 1..{n_layers} per step (mean): {running}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 prompts, 16 tokens: under a minute on 2 cores"
    )
    parser.add_argument(
        "--preset", choices=["cpu", "7b"], default="cpu", help="cpu: 8 layers × 256; 7b: GPU only"
    )
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--naive-prompts", type=int, default=None, help="time the naive loop on fewer prompts"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--early-exit", action="store_true", help="also time per-token early exit vs static full depth"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (≥ 5 advised)")
    args = parser.parse_args()
    n_prompts = args.prompts or (8 if args.quick else 32)
    params = GenerationParams(max_new_tokens=args.max_new_tokens or (16 if args.quick else 32))
    loaded = build_model(args.preset, args.device)
    n_layers = loaded.n_layers
    requested = [layers_from_percent(d, n_layers) for d in DEFAULT_DEPTHS]  # seven, with repeats
    distinct = list(dict.fromkeys(requested))
    prompts = bench_prompts(n_prompts)
    print(
        f"model: random Llama, {n_layers} layers, hidden {loaded.info.hidden_size}, {loaded.info.dtype}, "
        f"{args.device}; torch threads {torch.get_num_threads()}"
    )
    print(
        f"prompts: {n_prompts}, max_new_tokens: {params.max_new_tokens}, depths % {list(DEFAULT_DEPTHS)} "
        f"→ layers {requested} ({len(distinct)} distinct)"
    )
    print(
        f"per-depth batching would cost Σk/L = {sum(requested) / n_layers:.2f} full passes "
        f"({sum(distinct) / n_layers:.2f} for the distinct depths)"
    )

    naive_subset = prompts[: args.naive_prompts or n_prompts]
    ours, batched, naive = (
        generate(loaded, prompts, distinct, params),
        batched_generate(loaded, prompts, distinct, params),
        naive_loop(loaded, naive_subset, requested, params),
    )
    seconds = interleaved(
        {
            "ours": lambda: generate(loaded, prompts, distinct, params),
            "full": lambda: generate(loaded, prompts, [n_layers], params),
            "batched": lambda: batched_generate(loaded, prompts, distinct, params),
            "naive": lambda: naive_loop(loaded, naive_subset, requested, params),
        },
        args.rounds,
        warm_up=False,  # each just ran once above (and gave the completions compared below)
    )
    ours_s, full_s = statistics.median(seconds["ours"]), statistics.median(seconds["full"])
    batched_s, naive_s = statistics.median(seconds["batched"]), statistics.median(seconds["naive"])
    ours_by_key = {(c.prompt_text, c.layers): c.token_ids for c in ours}
    mismatches = [key for key, ids in naive.items() if ours_by_key[key] != ids]
    batched_same = sum(ours_by_key[key] == ids for key, ids in batched.items())
    naive_jobs = len(naive_subset) * len(requested)
    ours_jobs = n_prompts * len(requested)  # every requested (prompt, depth) answered
    naive_rate, ours_rate = naive_jobs / naive_s, ours_jobs / ours_s
    print(f"naive loop:   {naive_jobs} completions in {naive_s:.2f} s = {naive_rate:.2f} completions/s")
    print(f"depthscope:   {ours_jobs} completions in {ours_s:.2f} s = {ours_rate:.2f} completions/s")
    print(
        f"batched generate once per distinct depth: {len(batched)} completions in {batched_s:.2f} s "
        f"vs depthscope {ours_s:.2f} s for the same {len(distinct)} depths"
    )
    print(f"full depth alone: {full_s:.2f} s; depth_overhead: {ours_s / full_s:.2f}")
    print(f"identical completions: {len(naive) - len(mismatches)}/{len(naive)} (naive loop)")
    print(f"identical to batched generate: {batched_same}/{len(batched)} (left padding may flip near-ties)")
    exact = loaded.info.dtype == "float32"  # in bf16 a batch's shape changes the rounding: near-ties flip
    if mismatches:
        print(f"{'MISMATCH' if exact else 'differs (bf16 rounding, not a failure)'} on {mismatches[:3]}")
    if not exact:
        print("exactness is asserted in float32 (tests/test_truncation.py; tests/test_gpu.py on CUDA)")
    if args.early_exit:
        cases = EXIT_CASES_7B if args.preset == "7b" else EXIT_CASES
        early_exit_case(loaded, prompts, params, args.rounds, cases)
    naive_share = len(naive_subset) / n_prompts  # the naive loop ran on fewer prompts: per completion
    vs_batched = [b / o for b, o in zip(seconds["batched"], seconds["ours"], strict=True)]
    vs_naive = [n / naive_share / o for n, o in zip(seconds["naive"], seconds["ours"], strict=True)]
    print(f"rounds: {args.rounds} interleaved after a warm-up; median (min–max) over the rounds")
    print(f"speedup_vs_batched_generate: {spread(vs_batched)}")
    print(f"speedup_vs_naive: {spread(vs_naive)}")
    return 1 if mismatches and exact else 0


if __name__ == "__main__":
    sys.exit(main())
