"""Lenses: how a layer's residual state is read as the final layer's.

``heads`` (the exit heads a token's exit state is read with: raw, or tuned), ``tuned`` (the tuned
lens's affine translators and loading a trained one), ``files`` (where lenses live and their KL
reports; torch-free, pages read it), ``logit`` (the logit lens on the last prompt token, refusal mass
and when refusal emerges) and ``training`` (training a tuned lens on token sequences). Between
decoding and generation in the data flow: lenses read states through ``engine.decoding`` (capture,
prompts), and generation reads exits through the heads; generating a lens's training text is
``engine.usecases.train_tuned_lens``. Kept import-free so pages can read ``files`` without torch.
"""
