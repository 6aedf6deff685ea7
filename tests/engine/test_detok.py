"""IncrementalDetokenizer with a one-token-per-byte tokenizer: multi-byte characters span several tokens."""

from __future__ import annotations

import pytest

from steering_server.detok import IncrementalDetokenizer
from steering_server.tiny_models import byte_tokenizer

TEXT = "héllo ✓ 日本語 🎉"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _ids(tok, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte: the premise of these tests
    return ids


def _stream(tok, ids: list[int], stop: tuple[str, ...] = ()) -> tuple[IncrementalDetokenizer, list[str], str]:
    d = IncrementalDetokenizer(tok, stop)
    deltas = [d.add(i) for i in ids]
    return d, deltas, d.finish()


def test_streaming_never_splits_a_character_and_loses_nothing(tok) -> None:
    ids = _ids(tok, TEXT)
    d, deltas, tail = _stream(tok, ids)
    assert not any("\ufffd" in x for x in [*deltas, tail])
    assert "".join(deltas) + tail == TEXT
    assert not d.stopped


def test_without_stop_strings_each_character_is_released_as_soon_as_it_is_complete(tok) -> None:
    d = IncrementalDetokenizer(tok)
    shown = ""
    for n, ch in enumerate(TEXT, start=1):
        *head, last = _ids(tok, ch)
        for i in head:  # incomplete character: nothing new to show
            assert d.add(i) == ""
        shown += d.add(last)
        assert shown == TEXT[:n]
    assert d.finish() == ""


def _check_prefixes(deltas: list[str], tail: str, want: str) -> None:
    """Every point of the stream shows a prefix of the trimmed text: nothing past the stop is ever sent."""
    shown = ""
    for x in deltas:
        shown += x
        assert want.startswith(shown), (shown, want)
        assert "\ufffd" not in x
    assert shown + tail == want


@pytest.mark.parametrize(
    ("stop", "want"),
    [
        ("lo ✓", "hél"),  # ASCII start, multi-byte end: split across many tokens
        ("✓ 日", "héllo "),  # starts and ends inside multi-byte characters
        ("本語", "héllo ✓ 日"),
        ("🎉", "héllo ✓ 日本語 "),  # the last character, four bytes
        ("é", "h"),
        ("h", ""),  # the very first token
        ("語 🎉", "héllo ✓ 日本"),
    ],
)
def test_stop_string_is_trimmed(tok, stop: str, want: str) -> None:
    d, deltas, tail = _stream(tok, _ids(tok, TEXT), (stop,))
    _check_prefixes(deltas, tail, want)
    assert d.stopped
    assert d.text == want


def test_text_after_the_stop_is_ignored(tok) -> None:
    d = IncrementalDetokenizer(tok, ("✓",))
    out = [d.add(i) for i in _ids(tok, "héllo ✓")]
    assert d.stopped
    more = [d.add(i) for i in _ids(tok, " 日本語 🎉 and more")]
    assert more == [""] * len(more)
    tail = d.finish()
    assert "".join(out) + tail == "héllo "
    assert d.text == "héllo "


def test_a_partial_match_that_diverges_is_released(tok) -> None:
    # "lo X" shares "lo " with the text but never completes: everything comes out, the held-back part at the end.
    d, deltas, tail = _stream(tok, _ids(tok, TEXT), ("lo X", "日本人"))
    _check_prefixes(deltas, tail, TEXT)
    assert not d.stopped


def test_several_stop_strings_trim_at_the_first_match(tok) -> None:
    d, deltas, tail = _stream(tok, _ids(tok, TEXT), ("🎉", "✓", "日本"))
    _check_prefixes(deltas, tail, "héllo ")
    assert d.stopped


def test_overlapping_stop_strings_trim_at_the_earliest_match_whatever_their_order(tok) -> None:
    for stops in (("llo ✓", "éll"), ("éll", "llo ✓")):
        d, deltas, tail = _stream(tok, _ids(tok, TEXT), stops)
        assert d.text == "h" and "".join(deltas) + tail == "h"


def test_held_back_text_is_at_most_the_longest_stop_minus_one(tok) -> None:
    stop = "xyz!"
    d = IncrementalDetokenizer(tok, (stop,))
    shown = "".join(d.add(i) for i in _ids(tok, "abcdefgh"))
    assert shown == "abcde"  # 3 characters could still start "xyz!"... held back
    assert d.finish() == "fgh"


def test_special_tokens_produce_no_text(tok) -> None:
    d = IncrementalDetokenizer(tok)
    shown = "".join(d.add(i) for i in _ids(tok, "hé"))
    shown += d.add(tok.eos_token_id)
    shown += d.finish()
    assert shown == "hé"


def test_generation_ending_inside_a_character_emits_no_replacement_character(tok) -> None:
    ids = _ids(tok, "ok 日")[:-1]  # the last byte of 日 never arrives
    _, deltas, tail = _stream(tok, ids)
    assert "".join(deltas) + tail == "ok "
