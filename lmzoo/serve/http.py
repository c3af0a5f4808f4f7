"""What every route shares: lmzoo's error answer (OpenAI's shape, so its client shows the message),
the model lookup, and server-sent events of a generation running on a model's worker."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from lmzoo.errors import UserError
from lmzoo.serve.registry import ServedModel

UNION_MEMBER = re.compile(r"^((constrained-)?(str|int|float)|bool|list\[.*\]|dict\[.*\])$")


class NotFound(UserError):
    """A name (model, objective) the server does not have: answered 404."""


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a refused body, in one line, and the field it concerns. Of a union (one
    prompt or a list of them) pydantic reports every member: the one of the right type whose limit
    was broken is the problem, not "should be a string" of the other member."""
    errors = exc.errors()
    error = next((e for e in errors if not str(e.get("type", "")).endswith("_type")), errors[0])
    # pydantic names the member of a union it tried ("prompt", "str"): the field is what a client wrote
    where = [str(p) for p in error.get("loc", ()) if p != "body" and not UNION_MEMBER.match(str(p))]
    if error.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if error.get("type") == "missing":
        if not where:
            return "the request body is missing: send a JSON object", None
        return f"missing field {'.'.join(where)}", ".".join(where)
    field = ".".join(where) if where else "the body"
    return f"{field}: {error.get('msg', 'invalid value')}", ".".join(where) or None


def lookup(app: FastAPI, name: str) -> ServedModel:
    models: dict[str, ServedModel] = app.state.models
    if name not in models:
        raise NotFound(f"model {name!r} is not loaded (loaded: {', '.join(models)})")
    return models[name]


async def stream_events(m: ServedModel, job: Callable[[Callable[[str], None], threading.Event], Any],
                        event: Callable[[str], dict], last: Callable[[Any], list[dict]]) -> AsyncIterator[str]:
    """Server-sent events of a generation on ``m``'s worker: ``event(delta)`` for each piece of text,
    then ``last(result)``. When the client goes away the response stops iterating and the ``finally``
    sets ``cancel``, which the generation loop checks after every token (a job still queued never runs)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            put(("end", job(lambda delta: put(("delta", delta)), cancel)))
        except Exception as e:  # noqa: BLE001 - reported to the client in the stream
            put(("error", e))

    m.count("requests")
    future = m.worker.submit(work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "delta":
                yield sse(event(value))
                continue
            if kind == "error":
                status = "invalid_request_error" if isinstance(value, UserError) else "server_error"
                yield sse({"error": {"message": str(value), "type": status, "param": None, "code": None}})
            else:
                for item in last(value):
                    yield sse(item)
            break
    finally:
        cancel.set()
        future.cancel()


def sse(data: Any) -> str:
    """One server-sent event (OpenAI's ``[DONE]`` marker is a bare string)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
