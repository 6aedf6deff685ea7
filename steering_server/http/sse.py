"""Server-sent events: the chunks of a streamed completion, and a Compare's variants merged into one stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from ..engine_api import RequestStream
from ..types import GenerationResult, TokenEvent
from . import encode

__all__ = ["Chunks", "event", "merged"]

JSON = dict[str, Any]


class Chunks:
    """The chunks of one streamed completion (chat: `chat.completion.chunk` with deltas; else `text_completion`)."""

    def __init__(self, chat: bool, response_id: str, created: int, model: str) -> None:
        self.chat = chat
        self.args = (response_id, created, model)
        self.first = True

    def token(self, event: TokenEvent) -> JSON:
        return self._text(event.text_delta, None, encode.token_extension(event))

    def final(self, result: GenerationResult, seed: int) -> JSON:
        # The text held back while it could still begin a stop string comes with the finish reason.
        return self._text(result.text_tail, encode.finish_reason(result.stop_reason), encode.result_extension(result,
                                                                                                             seed))

    def usage(self, result: GenerationResult) -> JSON:
        if self.chat:
            return encode.chat_chunk(*self.args, None, usage_=encode.usage(result))
        return encode.completion_chunk(*self.args, None, usage_=encode.usage(result))

    def _text(self, text: str, finish: str | None, steering: JSON) -> JSON:
        if not self.chat:
            return encode.completion_chunk(*self.args, text, finish, steering)
        delta: JSON = {"content": text} if text or not finish else {}
        if self.first:  # OpenAI's first delta names the role
            delta = {"role": "assistant", "content": text}
            self.first = False
        return encode.chat_chunk(*self.args, delta, finish, steering)


async def merged(streams: tuple[RequestStream, ...]) -> AsyncIterator[tuple[int, TokenEvent | GenerationResult]]:
    """Every stream's tokens as they come, each stream's result after its tokens; the first error raises."""
    queue: asyncio.Queue[tuple[int, TokenEvent | GenerationResult | BaseException]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for event in stream:
                queue.put_nowait((i, event))
            queue.put_nowait((i, await stream.result()))
        except Exception as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        finished = 0
        while finished < len(streams):
            i, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, GenerationResult):
                finished += 1
            yield i, item
    finally:
        for t in tasks:
            t.cancel()


def event(payload: JSON) -> str:
    """One server-sent event carrying `payload` as JSON."""
    # allow_nan=False: a score is finite by the engine's containment; never send what JSON cannot parse.
    return f"data: {json.dumps(payload, allow_nan=False, separators=(',', ':'))}\n\n"
