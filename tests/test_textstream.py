"""TextStream: incremental detokenisation with stop strings, on the demo model's real byte-level tokenizer.

Run: python -m pytest tests/test_textstream.py -q
"""

from __future__ import annotations

import pytest

from serving.textstream import TextStream


@pytest.fixture(scope="module")
def tokenizer(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(demo_model))


def make_stream(tokenizer, stop: list[str]) -> TextStream:
    return TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop)


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text  # the tokenizer round-trips, so expectations below are exact
    return ids


def push_all(stream: TextStream, ids: list[int]) -> list[str]:
    """Push tokens until the stream stops; return the piece released after each push."""
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    return pieces


def test_without_stop_strings_the_pieces_add_up_to_the_text(tokenizer):
    text = "Hello world, the capital of France is Paris."
    stream = make_stream(tokenizer, [])
    pieces = push_all(stream, encode(tokenizer, text))
    assert "".join(pieces) + stream.finish() == text
    assert not stream.stopped
    assert all(pieces), "with no stop strings and ASCII text every token releases its text at once"


def test_stop_string_spanning_two_tokens_stops_and_truncates_before_it(tokenizer):
    text = "Hello world, the capital of France is Paris."
    ids = encode(tokenizer, text)
    stop = "capital of"
    # the stop string is made of two tokens: neither alone contains it
    assert not any(stop in tokenizer.decode([t]) for t in ids)
    stream = make_stream(tokenizer, [stop])
    pieces = push_all(stream, ids)
    assert stream.stopped
    assert "".join(pieces) == "Hello world, the "
    assert len(pieces) == len(encode(tokenizer, "Hello world, the capital of")), (
        "stops on the token that completes it"
    )
    assert stream.finish() == "", "nothing more is released once a stop string was seen"


def test_stop_string_inside_one_token_cuts_that_token(tokenizer):
    stream = make_stream(tokenizer, ["apit"])
    pieces = push_all(stream, encode(tokenizer, "Hello world, the capital of France"))
    assert stream.stopped
    assert "".join(pieces) == "Hello world, the c"


def test_text_that_could_start_a_stop_string_is_held_back_then_released(tokenizer):
    text = "Hello world, the capital of France is Paris."
    stream = make_stream(tokenizer, ["Paris!"])
    released = ""
    for token in encode(tokenizer, text):
        released += stream.push(token)
        decoded = stream.text()
        held = decoded[len(released) :]
        assert decoded.startswith(released)
        assert "Paris!".startswith(held), f"held back {held!r}, which cannot begin the stop string"
        if decoded.endswith(" Par") or decoded.endswith(" Paris"):
            assert held in ("Par", "Paris"), "a possible stop-string prefix must not be emitted yet"
    assert not stream.stopped
    assert released == text, "'Paris.' cannot become 'Paris!', so everything is released"


def test_earliest_stop_string_wins_whatever_their_order(tokenizer):
    # "world" is held back as it grows; the token 'd' completes both "world" and "ld" at once. The text
    # must end before the earliest match, never leak the start of another stop string.
    ids = encode(tokenizer, "Hello world, the capital")
    for stops in (["world", "ld"], ["ld", "world"]):
        stream = make_stream(tokenizer, stops)
        pieces = push_all(stream, ids)
        assert stream.stopped
        assert "".join(pieces) == "Hello ", stops


@pytest.mark.parametrize("text", ["café au lait", "日本語のテキスト", "ok 🙂 done", "é🙂日"])
def test_multibyte_characters_are_never_split_into_replacement_characters(tokenizer, text):
    ids = encode(tokenizer, text)
    assert len(ids) > len(text.split()), "these characters take several byte tokens"
    stream = make_stream(tokenizer, [])
    pieces = push_all(stream, ids)
    assert not any("\ufffd" in piece for piece in pieces), pieces
    assert "".join(pieces) + stream.finish() == text
    # a character's first byte alone releases nothing
    assert "" in pieces


def test_multibyte_characters_and_stop_strings_together(tokenizer):
    text = "Il a dit café. Le 日本 est loin 🙂 fin"
    stream = make_stream(tokenizer, ["est loin"])
    pieces = push_all(stream, encode(tokenizer, text))
    assert stream.stopped
    assert not any("\ufffd" in piece for piece in pieces)
    assert "".join(pieces) == "Il a dit café. Le 日本 "


def test_finish_releases_held_back_text(tokenizer):
    text = "the capital of France is"
    stream = make_stream(tokenizer, ["France is Rome"])
    released = "".join(push_all(stream, encode(tokenizer, text)))
    assert released == "the capital of ", "'France is' could still become the stop string"
    assert stream.finish() == "France is"
    assert stream.finish() == "", "finish releases the held text once"


def test_finish_drops_an_incomplete_character(tokenizer):
    ids = encode(tokenizer, "ok 🙂")
    stream = make_stream(tokenizer, [])
    released = "".join(stream.push(t) for t in ids[:-1])  # the emoji's last byte never arrives
    assert released + stream.finish() == "ok "


def test_each_push_decodes_a_few_tokens_not_the_whole_answer(tokenizer):
    """Issue 12: decoding the whole answer at every token made a long answer's tokens ever slower."""
    text = "The capital of France is Paris, and the capital of Japan is Tokyo. " * 8
    ids = encode(tokenizer, text)
    decoded_lengths: list[int] = []

    def decode(part: list[int]) -> str:
        decoded_lengths.append(len(part))
        return tokenizer.decode(part, skip_special_tokens=True)

    stream = TextStream(decode, [])
    assert "".join(push_all(stream, ids)) + stream.finish() == text
    assert len(ids) > 100 and max(decoded_lengths) <= 4


def test_a_decoder_that_drops_the_first_words_space_still_gives_the_whole_text():
    """SentencePiece's decoder drops the leading space of a text: a token decoded alone after others must not
    lose its space."""
    pieces = [" Hello", " world", ",", " how", " are", " you", "?"]

    def decode(ids: list[int]) -> str:
        return "".join(pieces[i] for i in ids).removeprefix(" ")

    stream = TextStream(decode, ["you"])
    released = push_all(stream, list(range(len(pieces))))
    assert "".join(released) == "Hello world, how are "
    assert stream.stopped
