"""Lenses: how a layer's residual state is read as the final layer's.

``heads`` (the exit heads a token's exit state is read with: raw, or tuned), ``tuned`` (the tuned
lens's affine translators and loading a trained one) and ``files`` (where lenses live and their KL
reports; torch-free, pages read it). Below decoding in the data flow: the logit-lens analysis
(``engine.lens``) and tuned-lens training (``engine.tuned_lens``) generate and encode text, so they sit
above it, outside this package. Kept import-free so pages can read ``files`` without torch.
"""
