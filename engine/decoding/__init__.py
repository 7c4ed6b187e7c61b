"""Decoding: how prompts reach a model (``prompts``: template, encoding, fitting, padding), the one
way to read residual states (``capture``), the one batched decoding loop for every exit rule
(``loop``) and self-speculative decoding (``speculative``). The rules themselves are
``engine.rules`` (torch-free: types, CLI and pages read them); the exit heads come from the caller
(``engine.lenses.heads``), so decoding sits below the lenses.
"""
