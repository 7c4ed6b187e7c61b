"""Tiny random models and tokenizers, built offline in milliseconds (tests, benchmarks, examples)."""

from __future__ import annotations

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
    "gpt2": {"n_embd": 64, "n_head": 4, "n_positions": 256},
    "gpt_neox": {"rotary_pct": 0.5},
}


def build_tiny_tokenizer(
    with_chat_template: bool = True, corpus: list[str] | None = None, vocab_size: int = 320
):
    """A byte-level BPE tokenizer with ChatML specials and no pad token (EOS is <|im_end|>, id 2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(
        corpus or TOKENIZER_CORPUS, vocab_size=vocab_size, min_frequency=1, special_tokens=specials
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    if with_chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(
    arch: str = "llama",
    n_layers: int = 6,
    vocab_size: int = 320,
    hidden_size: int = 64,
    seed: int = 0,
    initializer_range: float = 0.2,
):
    """A random causal LM; weights spread wide (initializer_range) so greedy decoding has no near-ties."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    common = {
        "vocab_size": vocab_size,
        "initializer_range": initializer_range,
        "bos_token_id": 0,
        "eos_token_id": 2,
    }
    if arch == "gpt2":
        kwargs = {**common, **TINY_CONFIGS["gpt2"], "n_layer": n_layers, "n_embd": hidden_size}
    else:
        kwargs = {
            **common,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": n_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "pad_token_id": None,
            "tie_word_embeddings": False,
            **TINY_CONFIGS[arch],
        }
    config = AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
