"""Incremental, UTF-8-safe detokenization with stop strings (Engine rule 7).

Decoding token by token breaks multi-byte characters; we decode a short window and emit the text past what was
already emitted only once it no longer ends in a replacement character. Text that could still be the start of a
stop string is held back, so the streamed deltas always concatenate to the final (trimmed) text.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens whose text is final
        self.text = ""  # all decoded text so far (untrimmed)
        self._emitted = 0  # characters of self.text already returned
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Add one token; returns the new text that is safe to show (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.text += new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        # The earliest match wins, whatever order the stop strings were given in.
        hits = [at for s in self._stop if (at := self.text.find(s, max(0, self._emitted - len(s) + 1))) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            final = True
        upto = len(self.text) if final else max(self._emitted, len(self.text) - self._hold)
        delta = self.text[self._emitted : upto]
        self._emitted = upto
        return delta

    def finish(self) -> str:
        """The rest of the text at the end of generation (held-back characters, trimmed at a stop string)."""
        tail = ""
        if self._read < len(self._ids) and not self.stopped:
            rest = self._decode(self._ids[self._prefix :])[len(self._decode(self._ids[self._prefix : self._read])) :]
            self.text += rest.rstrip("\ufffd") if rest.endswith("\ufffd") else rest
            self._read = len(self._ids)
        tail = self._release(final=True)
        return tail
