"""Decoding: the one batched decoding loop for every exit rule (``loop``) and the residual capture
facility (``capture``). The rules themselves are ``engine.rules`` (torch-free: types, CLI and pages
read them)."""
