"""The OpenAI-compatible API's requests and responses, without the web stack: what vLLM, llama.cpp's
server, OpenVINO Model Server and TGI speak, for ``/v1/completions`` and ``/v1/chat/completions``.

A request body is parsed and checked here into a :class:`Asked` (wrong JSON or types are an
:class:`ApiError` naming the field); responses, stream chunks and errors are built here in
OpenAI's shapes. Errors are ``{"error": {"message", "type", "param", "code"}}``.

Sampling follows OpenAI's defaults: ``temperature`` 1 (0: greedy), ``top_p`` 1, no seed (each
request its own random stream; a ``seed`` makes it reproducible). ``max_tokens`` (or
``max_completion_tokens``) defaults to 16 for a completion, as OpenAI's, and to what the context
has room for in a chat. ``n`` and ``best_of`` may only be 1; ``logprobs``, ``echo``, ``suffix``
and tools are refused (400). ``ignore_eos`` (vLLM's extension) decodes past the EOS, for fixed
output lengths.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_STOPS = 4  # as OpenAI's
TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}
CODES = {404: "model_not_found", 413: "request_too_large", 429: "queue_full", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code or CODES.get(status)

    def body(self) -> dict[str, Any]:
        return error_body(self.status, str(self), self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or CODES.get(status)}}


@dataclass(frozen=True)
class Asked:
    """One request, checked: the prompt as text, token ids or chat messages."""

    chat: bool
    model: str
    prompt: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    messages: tuple[dict[str, Any], ...] = ()
    max_tokens: int | None = None  # None: the default for the endpoint
    stop: tuple[str, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False


def parse(body: bytes | bytearray, chat: bool) -> Asked:
    """The request body of ``/v1/chat/completions`` (``chat``) or ``/v1/completions``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(f"the request body is not JSON ({err}); send a JSON object") from err
    except RecursionError as err:
        raise ApiError("the request body's JSON is nested too deep; send a flat request object") from err
    if not isinstance(data, dict):
        raise ApiError(f"the request body is a JSON {type(data).__name__}; send a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("'model' is required: a string, one of the ids GET /v1/models lists", param="model")
    for key in ("n", "best_of"):
        if data.get(key) not in (None, 1):
            raise ApiError(f"'{key}' may only be 1 here (one choice per request); send several requests", param=key)
    for key in ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions", "logit_bias"):
        if data.get(key) not in (None, False, [], {}):
            raise ApiError(f"'{key}' is not supported by kiln serve; drop it", param=key)
    fmt = data.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise ApiError("only the text response_format is supported by kiln serve; drop it", param="response_format")
    fields: dict[str, Any] = {}
    if chat:
        fields["messages"] = _messages(data.get("messages"))
    else:
        fields.update(_prompt(data.get("prompt")))
    tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError("'stream_options' must be an object such as {\"include_usage\": true}", param="stream_options")
    return Asked(
        chat=chat,
        model=model,
        max_tokens=_int(tokens, param, 1) if tokens is not None else None,
        stop=_stop(data.get("stop")),
        temperature=_number(data.get("temperature"), "temperature", 0.0, 2.0, 1.0),
        top_p=_number(data.get("top_p"), "top_p", 0.0, 1.0, 1.0, low_open=True),
        seed=_int(data["seed"], "seed", -(2**63)) if data.get("seed") is not None else None,
        stream=_bool(data.get("stream"), "stream"),
        include_usage=_bool((options or {}).get("include_usage"), "stream_options.include_usage"),
        ignore_eos=_bool(data.get("ignore_eos"), "ignore_eos"),
        **fields,
    )


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise ApiError('\'messages\' must be a non-empty list of {"role", "content"} objects', param="messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(f"{where} must be an object with a string 'role'", param=where)
        content = message.get("content")
        if isinstance(content, list):  # parts: only text ones
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
                raise ApiError(f"{where}.content: only text parts are supported by kiln serve", param=where)
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(f"{where}.content must be a string (or a list of text parts)", param=where)
        out.append({"role": message["role"], "content": content})
    return tuple(out)


def _prompt(value: Any) -> dict[str, Any]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # one prompt in a list
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return {"prompt_ids": tuple(value)}
    raise ApiError(
        "'prompt' must be a string or a list of token ids (one prompt per request); send several requests",
        param="prompt",
    )


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(f"'stop' must be a string or a list of at most {MAX_STOPS} strings", param="stop")
    return tuple(s for s in stops if s)


def _number(value: Any, name: str, low: float, high: float, default: float, low_open: bool = False) -> float:
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ApiError(f"'{name}' must be a number, got {json.dumps(value)[:40]}", param=name)
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ApiError(f"'{name}' must be in {bracket}{low:g}, {high:g}], got {value}", param=name)
    return float(value)


def _int(value: Any, name: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(f"'{name}' must be an integer, got {json.dumps(value)[:40]}", param=name)
    if value < low:
        raise ApiError(f"'{name}' must be at least {low}, got {value}", param=name)
    return value


def _bool(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"'{name}' must be true or false, got {json.dumps(value)[:40]}", param=name)
    return value


# ---- responses ----


def request_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(rid: str, created: int, asked: Asked, text: str, finish: str, counts: tuple[int, int]) -> dict[str, Any]:
    """The whole answer of a request that does not stream; ``counts``: its prompt's tokens and the
    tokens it generated."""
    if asked.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {
        "id": rid,
        "object": "chat.completion" if asked.chat else "text_completion",
        "created": created,
        "model": asked.model,
        "choices": [choice],
        "usage": usage(*counts),
    }


def chunk(
    rid: str, created: int, asked: Asked, text: str | None, finish: str | None, role: bool = False
) -> dict[str, Any]:
    """One server-sent event of a stream: new text, or the finish reason (``role``: the chat's first
    chunk, which names the assistant). ``text`` None with no finish: the usage chunk's empty choices."""
    if asked.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    out = {
        "id": rid,
        "object": "chat.completion.chunk" if asked.chat else "text_completion",
        "created": created,
        "model": asked.model,
        "choices": [choice],
    }
    if asked.include_usage:
        out["usage"] = None
    return out


def usage_chunk(rid: str, created: int, asked: Asked, prompt_tokens: int, tokens: int) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return {
        "id": rid,
        "object": "chat.completion.chunk" if asked.chat else "text_completion",
        "created": created,
        "model": asked.model,
        "choices": [],
        "usage": usage(prompt_tokens, tokens),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: {...}`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


DONE = sse("[DONE]")
