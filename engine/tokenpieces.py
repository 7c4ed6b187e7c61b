"""A completion's text cut at its token boundaries, torch-free (the explorer colours each piece by the
layer its token exited at).

Decoding one token id alone goes wrong in two ways: a byte-level token may hold half of a UTF-8
character, and SentencePiece drops a word's leading space when the token comes first. So each piece is
what decoding a short window *with* the token adds to decoding the window *without* it; a token that
ends inside a character gives an empty piece and the character appears with the token that completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

Decode = Callable[[list[int]], str]
WINDOW = 6  # tokens of context before each token: enough for any character or word-start rule
_INCOMPLETE = "\ufffd"  # what decoders print for bytes that do not yet form a character


def token_pieces(decode: Decode, token_ids: Sequence[int]) -> list[str]:
    """One string per token id; pieces of complete characters join to ``decode(token_ids)``."""
    ids = [int(t) for t in token_ids]
    pieces: list[str] = []
    pending = 0  # tokens whose bytes are not yet a whole character
    for i in range(len(ids)):
        start = max(0, i - pending - WINDOW)
        before = decode(ids[start : i - pending])
        after = decode(ids[start : i + 1])
        if after.endswith(_INCOMPLETE) and i + 1 < len(ids):
            pieces.append("")
            pending += 1
            continue
        pending = 0
        pieces.append(
            after[len(before) :] if after.startswith(before) else after[_common_prefix(before, after) :]
        )
    return pieces


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenizer_json(source: str | Path) -> Path | None:
    """The model folder's tokenizer.json (fast tokenizers), or None (a .gguf file, a hub id)."""
    try:
        path = Path(source).expanduser() / "tokenizer.json"
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def file_decoder(path: Path) -> Decode:
    """A decoder from a tokenizer.json with the ``tokenizers`` library (Rust, no torch), skipping special
    tokens as generation does when it writes a completion's text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
