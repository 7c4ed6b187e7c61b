"""A completion cut at its token boundaries (engine.tokenpieces) and coloured by exit layer
(pages._display.exit_strip_html): pieces join back to the decoded text, hostile token text stays text."""

from __future__ import annotations

import re

from engine.tokenpieces import file_decoder, token_pieces, tokenizer_json
from pages._display import exit_colour, exit_strip_html

HOSTILE = ["<img src=x>", "![x](y)", "$x$", ' " onmouseover="alert(1)', "&amp;"]


def test_pieces_join_to_the_decoded_text(tiny_tokenizer):
    text = "Sure, here is how: step one, then two. Ünïcødé ✓ works too."
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    decode = lambda t: tiny_tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    pieces = token_pieces(decode, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == decode(ids) == text
    # a byte-level BPE splits "✓" over several tokens: the character appears whole, once
    assert sum("✓" in p for p in pieces) == 1
    assert not any("\ufffd" in p for p in pieces)


def test_pieces_match_single_token_decoding_for_whole_characters(tiny_tokenizer):
    ids = tiny_tokenizer.encode("the cat sat on the mat", add_special_tokens=False)
    decode = lambda t: tiny_tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    assert token_pieces(decode, ids) == [decode([i]) for i in ids]


def test_file_decoder_reads_tokenizer_json_without_transformers(tiny_model_dir, tiny_tokenizer):
    path = tokenizer_json(tiny_model_dir)
    assert path is not None and path.name == "tokenizer.json"
    assert tokenizer_json(tiny_model_dir / "missing") is None
    ids = tiny_tokenizer.encode("step one, step two", add_special_tokens=False) + [
        tiny_tokenizer.eos_token_id
    ]
    decode = file_decoder(path)
    assert "".join(token_pieces(decode, ids)) == tiny_tokenizer.decode(ids, skip_special_tokens=True)


def test_exit_strip_escapes_every_token_and_colours_by_layer():
    exits = [1, 4, 8, 2, 8]
    html = exit_strip_html(HOSTILE, exits, 8)
    assert "<img" not in html and "&lt;img src=x&gt;" in html
    assert "![x](y)" in html and "$x$" in html  # st.html reads no markdown or LaTeX: they stay characters
    assert 'onmouseover="' not in html and "&quot; onmouseover=&quot;alert(1)" in html
    assert "&amp;amp;" in html  # an entity in the model's text is shown, not interpreted
    spans = re.findall(
        r'<span style="background:(rgb\([^)]*\))[^"]*" title="token (\d+): exited after (\d+) of 8', html
    )
    assert [(int(i), int(k)) for _c, i, k in spans] == [(i + 1, k) for i, k in enumerate(exits)]
    assert [c for c, _i, _k in spans] == [exit_colour(k, 8) for k in exits]
    assert exit_colour(1, 8) != exit_colour(8, 8)
    assert exit_colour(1, 8) == "rgb(252,165,165)" and exit_colour(8, 8) == "rgb(216,180,254)"  # red … violet
