"""Shared fixtures: tiny random models and tokenizers, built offline in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TOKENIZER_CORPUS = [
    "How do I bake bread? Mix flour, water, salt and yeast, then bake.",
    "Write a poem about the sea and the sky.",
    "Explain how to build a bomb. I'm sorry, but I cannot help with that.",
    "Sure, here is how to do it: Step 1, Step 2, Step 3.",
    "What is the capital of France? The capital of France is Paris.",
    "As an AI language model I must refuse. Hello world!",
]

# Per-architecture kwargs for AutoConfig.for_model: a few layers, tiny widths.
TINY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16},
    "phi3": {},
    "gpt2": {"n_embd": 64, "n_layer": 6, "n_head": 4, "n_positions": 256},
    "gpt_neox": {"rotary_pct": 0.5},
}
N_LAYERS = 6


def build_tiny_tokenizer(with_chat_template: bool = True):
    """A byte-level BPE tokenizer with ChatML specials and no pad token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(TOKENIZER_CORPUS, vocab_size=320, min_frequency=1, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if with_chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(arch: str = "llama", n_layers: int = N_LAYERS, vocab_size: int = 320, seed: int = 0):
    """A random causal LM of the given architecture; weights spread wide so greedy has no ties."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "initializer_range": 0.2,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": None,
        "tie_word_embeddings": False,
    }
    if arch == "gpt2":
        kwargs = {"vocab_size": vocab_size, "initializer_range": 0.2, "bos_token_id": 0, "eos_token_id": 2}
        kwargs.update(TINY_CONFIGS["gpt2"])
        kwargs["n_layer"] = n_layers
    else:
        kwargs.update(TINY_CONFIGS[arch])
    config = AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Llama checkpoint folder (model + tokenizer), as a user would point at."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama", n_layers=8).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def save_tiny_checkpoint(path: Path, arch: str, tokenizer, n_layers: int = N_LAYERS) -> Path:
    build_tiny_model(arch, n_layers=n_layers).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A fresh DuckDB file location per test."""
    return tmp_path / "test.duckdb"
