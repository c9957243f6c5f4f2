"""OpenAI's API shapes: requests checked into :class:`CompletionRequest`, responses built as
OpenAI documents them (``openai``'s own types parse them in the tests).

Checks follow OpenAI's: an unknown field, a wrong type or a value out of range is a 400 with
OpenAI's error JSON naming the parameter. Parameters the engine cannot honour are accepted only
at their neutral value (``n=1``, penalties 0, no logprobs), and refused otherwise, never ignored.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from restdecode.options import GenerationOptions

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


class APIError(Exception):
    """An error answered with OpenAI's error JSON and an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, param=param, code=code)


@dataclass
class CompletionRequest:
    """A checked ``/v1/chat/completions`` or ``/v1/completions`` request."""

    kind: str  # "chat" or "completion"
    model: str
    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    user: str | None = None

    def options(self, max_new_tokens: int) -> GenerationOptions:
        """The engine's options for this request (``stop`` is applied by the server too, to
        cut the stop sequence out of the text as OpenAI does)."""
        return GenerationOptions(max_new_tokens=max_new_tokens, temperature=self.temperature,
                                 top_p=self.top_p, seed=self.seed, stop_strings=self.stop)


# Parameters OpenAI defines that are accepted only at the value meaning "off".
_NEUTRAL = {
    "n": (1, None),
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "logprobs": (False, None),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "echo": (False, None),
    "best_of": (1, None),
    "suffix": (None,),
    "parallel_tool_calls": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None,),
    "service_level": (None,),
    "store": (False, None),
    "metadata": (None, {}),
}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
           "stream_options", "user"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "n", "frequency_penalty",
                         "presence_penalty", "logprobs", "top_logprobs", "logit_bias",
                         "parallel_tool_calls", "tools", "tool_choice", "response_format",
                         "service_level", "store", "metadata"}
COMPLETION_FIELDS = _COMMON | {"prompt", "n", "frequency_penalty", "presence_penalty",
                               "logprobs", "logit_bias", "echo", "best_of", "suffix"}


def parse_request(body: Any, kind: str) -> CompletionRequest:
    """Check a request body (decoded JSON) of ``kind`` "chat" or "completion"."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    allowed = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    for name in body:
        if name not in allowed:
            raise bad_request(f"Unrecognized request argument supplied: {name}", param=name)
    for name in allowed & _NEUTRAL.keys():
        if name in body and not _is_neutral(body[name], _NEUTRAL[name]):
            raise bad_request(f"{name}={body[name]!r} is not supported by this server "
                              f"(accepted: {_NEUTRAL[name]})", param=name)
    request = CompletionRequest(kind=kind, model=_string(body, "model", required=True))
    if kind == "chat":
        request.messages = _messages(body.get("messages"))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    else:
        request.prompt = _prompt(body.get("prompt"))
        max_tokens, param = body.get("max_tokens"), "max_tokens"
    if max_tokens is not None:
        request.max_tokens = _integer(max_tokens, param, minimum=1)
    request.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    request.top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if request.top_p == 0:
        raise bad_request("top_p must be > 0", param="top_p")
    if body.get("seed") is not None:
        request.seed = _integer(body["seed"], "seed", minimum=0)
    request.stop = _stop(body.get("stop"))
    request.stream = _boolean(body, "stream")
    request.include_usage = _stream_options(body.get("stream_options"), request.stream)
    request.user = _string(body, "user")
    return request


def _is_neutral(value: Any, neutral: tuple) -> bool:
    """``value`` is one of ``neutral`` (same type; an int and a float count as one type)."""
    def same_type(a: Any, b: Any) -> bool:
        numbers = (int, float)
        return type(a) is type(b) or (type(a) in numbers and type(b) in numbers)
    return any(same_type(value, choice) and value == choice for choice in neutral)


def _string(body: dict, name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"you must provide a {name} parameter", param=name)
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string, got {_kind(value)}", param=name)
    return value


def _integer(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {_kind(value)}", param=name)
    if value < minimum:
        raise bad_request(f"{name} must be >= {minimum}, got {value}", param=name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {_kind(value)}", param=name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low:g} and {high:g}, got {value}", param=name)
    return float(value)


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean, got {_kind(value)}", param=name)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop holds at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    return tuple(s for s in stops if s)


def _stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise bad_request("stream_options is only allowed when stream is true",
                          param="stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise bad_request('stream_options must be {"include_usage": true|false}',
                          param="stream_options")
    include = value.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad_request("stream_options.include_usage must be a boolean",
                          param="stream_options")
    return include


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty array", param="messages")
    return [_message(message, index) for index, message in enumerate(value)]


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _message(message: Any, index: int) -> dict:
    param = f"messages.[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{param} must be an object", param=param)
    unknown = set(message) - {"role", "content", "name"}
    if unknown:
        raise bad_request(f"{param} has unsupported field(s): {', '.join(sorted(unknown))}",
                          param=param)
    role = message.get("role")
    if role not in _ROLES:
        raise bad_request(f"{param}.role must be one of {', '.join(_ROLES)}, got {role!r}",
                          param=f"{param}.role")
    return {"role": _ROLES[role], "content": _content(message.get("content"), f"{param}.content")}


def _content(content: Any, param: str) -> str:
    """A string, or an array of ``{"type": "text", "text": ...}`` parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(part, dict) and part.get("type") == "text"
            and isinstance(part.get("text"), str) and set(part) <= {"type", "text"}
            for part in content):
        return "".join(part["text"] for part in content)
    raise bad_request(f"{param} must be a string or an array of text parts", param=param)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise bad_request("prompt must be a string", param="prompt")
    if not value:
        raise bad_request("prompt must not be empty", param="prompt")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


# ---- responses -------------------------------------------------------------------------------

def new_id(kind: str) -> str:
    """``chatcmpl-...`` or ``cmpl-...``."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def extension(stats, token_ids: list[int]) -> dict:
    """restdecode's non-breaking extension object: how the request was decoded."""
    return {"steps": stats.steps, "tokens_per_step": round(stats.tokens_per_step, 4),
            "tree_nodes_per_step": round(sum(stats.tree_size_per_step) / stats.steps, 4)
            if stats.steps else 0.0,
            "draft_time_s": round(stats.time_draft, 6),
            "verify_time_s": round(stats.time_verify, 6),
            "prefill_time_s": round(stats.time_prefill, 6),
            "decode_time_s": round(stats.time_decode, 6),
            "completion_token_ids": list(token_ids)}


@dataclass
class ResponseHead:
    """What every response and chunk of one request shares."""

    kind: str
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = self.id or new_id(self.kind)
        self.created = self.created or int(time.time())

    def _envelope(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model}

    def response(self, text: str, finish_reason: str, prompt_tokens: int, stats,
                 token_ids: list[int]) -> dict:
        """The whole (non-streamed) response."""
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text,
                                              "refusal": None},
                      "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("text_completion")
        return body | {"choices": [choice], "usage": usage(prompt_tokens, len(token_ids)),
                       "restdecode": extension(stats, token_ids)}

    def chunk(self, *, text: str | None = None, role: bool = False,
              finish_reason: str | None = None, include_usage: bool = False) -> dict:
        """One streamed chunk: the role, a text delta, or the final one with ``finish_reason``."""
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None,
                      "finish_reason": finish_reason}
            body = self._envelope("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None,
                      "finish_reason": finish_reason}
            body = self._envelope("text_completion")
        body["choices"] = [choice]
        if include_usage:
            body["usage"] = None  # OpenAI: null on every chunk but the last one
        return body

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        object_name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self._envelope(object_name) | {"choices": [],
                                              "usage": usage(prompt_tokens, completion_tokens)}


def finish_reason(stop_reason: str) -> str:
    """OpenAI's ``finish_reason`` for the engine's stop reason."""
    return "length" if stop_reason in ("length", "context_full") else "stop"


class StopTrimmer:
    """Cuts the text at the first stop sequence, which OpenAI leaves out of the output.

    Streamed text that might be the start of a stop sequence is held back until it is known not
    to be one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, piece: str) -> str:
        """The text that can be sent now, after ``piece``."""
        if self.stopped:
            return ""
        self.text += piece
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            return self._send(cut)
        return self._send(len(self.text) - self._held_back())

    def finish(self) -> str:
        """The text still held back, once generation ended."""
        return "" if self.stopped else self._send(len(self.text))

    @property
    def output(self) -> str:
        """The whole output text (stop sequence cut)."""
        cut = self._first_stop()
        return self.text if cut is None else self.text[:cut]

    def _send(self, end: int) -> str:
        piece = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece

    def _first_stop(self) -> int | None:
        found = [i for i in (self.text.find(stop) for stop in self.stops) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest end of the text that begins a stop sequence."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
