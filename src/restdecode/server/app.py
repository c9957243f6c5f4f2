"""The HTTP front end: OpenAI's routes over the scheduler, with auth, limits and metrics.

The asyncio side never runs the model: it checks the request, tokenizes the prompt (in a worker
thread, with its own copy of the tokenizer), queues a :class:`~restdecode.server.scheduler.Job`
and relays the scheduler's events as a JSON response or as server-sent events.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from restdecode.errors import RestdecodeError
from restdecode.server.metrics import ServerMetrics
from restdecode.server.protocol import (COMPLETIONS_DEFAULT_MAX_TOKENS, APIError,
                                        CompletionRequest, ResponseHead, StopTrimmer,
                                        bad_request, extension, finish_reason, parse_request)
from restdecode.server.scheduler import Job, QueueFull, Scheduler

if TYPE_CHECKING:
    from restdecode.engine import Engine

MAX_BODY_BYTES = 2 * 1024 * 1024
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
RETRY_AFTER_S = 1
UNKNOWN_CONTEXT = 4096  # a model that states no context length: the default answer length


@dataclass
class ServerConfig:
    """What the server answers as and whom it lets in.

    ``keys`` maps each API key to its tenant name (no keys: auth off). ``per_key_memory``: each
    tenant drafts from its own requests only (else everyone's requests draft for everyone).
    """

    model_name: str
    keys: dict[str, str] = field(default_factory=dict)
    per_key_memory: bool = False
    max_body_bytes: int = MAX_BODY_BYTES
    created: int = field(default_factory=lambda: int(time.time()))


def key_tenant(key: str) -> str:
    """The tenant name of a key that was given none: a short hash, never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def create_app(engine: "Engine", scheduler: Scheduler, config: ServerConfig,
               metrics: ServerMetrics) -> FastAPI:
    """The FastAPI application serving ``engine`` through ``scheduler``."""
    app = FastAPI(title="restdecode", docs_url=None, redoc_url=None, openapi_url=None)
    front = _FrontEnd(engine, scheduler, config, metrics)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        if error.status >= 400 and error.status != 500:
            metrics.requests.labels("rejected").inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(error.status_code, str(error.detail), type=kind).body(),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        body = APIError(500, f"internal error: {type(error).__name__}", type="server_error")
        return JSONResponse(body.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        answer = {"status": "ok", "model": config.model_name,
                  "queue_depth": scheduler.queue_depth, "active": scheduler.active}
        if scheduler.memory is not None:
            answer["memory"] = await run_in_threadpool(scheduler.memory.stats)
        return answer

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        front.tenant(request)
        return {"object": "list", "data": [front.model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request) -> dict:
        front.tenant(request)
        if model != config.model_name:
            raise APIError(404, f"The model '{model}' does not exist", param="model",
                           code="model_not_found")
        return front.model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await front.complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await front.complete(request, "completion")

    return app


class _FrontEnd:
    """The request-side work of the routes (auth, checks, tokenizing, relaying events)."""

    def __init__(self, engine: "Engine", scheduler: Scheduler, config: ServerConfig,
                 metrics: ServerMetrics) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.config = config
        self.metrics = metrics
        # The scheduler thread detokenizes with the engine's tokenizer; requests get their own.
        self.tokenizer = copy.deepcopy(engine.tokenizer)
        self.tokenizer_lock = threading.Lock()

    def model_card(self) -> dict:
        return {"id": self.config.model_name, "object": "model", "created": self.config.created,
                "owned_by": "restdecode"}

    def tenant(self, request: Request) -> str:
        """The caller's tenant ("" when auth is off); 401 without a valid key."""
        if not self.config.keys:
            return ""
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "You didn't provide an API key. Send it as 'Authorization: "
                           "Bearer YOUR_KEY'.", code="missing_api_key")
        given = given.strip()
        for key, tenant in self.config.keys.items():
            if hmac.compare_digest(key.encode(), given.encode()):
                return tenant
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def complete(self, http: Request, kind: str) -> Response:
        """A chat or text completion, whole or streamed."""
        tenant = self.tenant(http)
        request = parse_request(await self._json(http), kind)
        if request.model != self.config.model_name:
            raise bad_request(f"The model '{request.model}' does not exist; this server "
                              f"serves '{self.config.model_name}'", param="model",
                              code="model_not_found")
        prompt_ids, max_new_tokens = await run_in_threadpool(self._prepare, request)
        job = Job(prompt_ids=prompt_ids, options=request.options(max_new_tokens),
                  tenant=tenant if self.config.per_key_memory else "",
                  loop=asyncio.get_running_loop())
        try:
            self.scheduler.submit(job)
        except QueueFull as full:
            raise APIError(429, f"The server is busy ({full}); retry shortly.", type="requests",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        head = ResponseHead(kind, self.config.model_name)
        if request.stream:
            return _JobStream(self._events(http, job, request, head), job,
                              media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache"})
        try:
            return JSONResponse(await self._whole(http, job, request, head))
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it: nginx's "client closed request"

    async def _json(self, http: Request) -> Any:
        """The body as JSON: 413 past the size limit, 400 when it is not JSON."""
        limit = self.config.max_body_bytes
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"The request body is larger than {limit} bytes.",
                           code="request_too_large")
        body = bytearray()
        async for chunk in http.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"The request body is larger than {limit} bytes.",
                               code="request_too_large")
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise bad_request("The request body is not valid JSON.") from None

    def _prepare(self, request: CompletionRequest) -> tuple[list[int], int]:
        """The prompt's token ids and the answer's length limit, checked against the context."""
        from restdecode.decode import prompt_token_ids

        with self.tokenizer_lock:
            try:
                ids = prompt_token_ids(self.tokenizer, prompt=request.prompt,
                                       messages=request.messages)
            except RestdecodeError as error:
                raise bad_request(str(error), param="messages" if request.messages else "prompt")
        limit = self.engine.backend.context_limit
        room = (limit if limit is not None else len(ids) + UNKNOWN_CONTEXT) - len(ids)
        default = room if request.kind == "chat" else min(COMPLETIONS_DEFAULT_MAX_TOKENS, room)
        max_tokens = request.max_tokens if request.max_tokens is not None else default
        if room < 1 or max_tokens > room:
            param = "messages" if request.kind == "chat" else "prompt"
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, "
                              f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the "
                              f"{param}, {max_tokens} in the completion). Please reduce the "
                              f"length of the {param} or completion.", param=param,
                              code="context_length_exceeded")
        return ids, max_tokens

    async def _next(self, http: Request, job: Job) -> tuple[str, Any]:
        """The job's next event; cancels the job if the client went away meanwhile."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    job.cancel()
                    raise _ClientGone from None

    def _first_text(self, job: Job, seen: list[bool]) -> None:
        if not seen[0]:
            seen[0] = True
            self.metrics.time_to_first_token.observe(time.perf_counter() - job.submitted)

    async def _whole(self, http: Request, job: Job, request: CompletionRequest,
                     head: ResponseHead) -> dict:
        seen = [False]
        while True:
            kind, value = await self._next(http, job)
            if kind == "piece":
                self._first_text(job, seen)
            elif kind == "error":
                raise APIError(500, value, type="server_error")
            else:
                trimmer = StopTrimmer(request.stop)
                trimmer.add(value.text)
                return head.response(trimmer.output, finish_reason(value.stats.stop_reason),
                                     len(job.prompt_ids), value.stats, value.token_ids)

    async def _events(self, http: Request, job: Job, request: CompletionRequest,
                      head: ResponseHead) -> AsyncIterator[str]:
        """Server-sent events: the role, one delta per decoding step, the finish, [DONE]."""
        usage_on, trimmer, seen = request.include_usage, StopTrimmer(request.stop), [False]
        if head.kind == "chat":
            yield _sse(head.chunk(role=True, include_usage=usage_on))
        while True:
            try:
                kind, value = await self._next(http, job)
            except _ClientGone:
                return
            if kind == "piece":
                self._first_text(job, seen)
                text = trimmer.add(value)
                if text:
                    yield _sse(head.chunk(text=text, include_usage=usage_on))
            elif kind == "error":
                yield _sse(APIError(500, value, type="server_error").body())
                break
            else:
                if text := trimmer.finish():
                    yield _sse(head.chunk(text=text, include_usage=usage_on))
                final = head.chunk(finish_reason=finish_reason(value.stats.stop_reason),
                                   include_usage=usage_on)
                yield _sse(final | {"restdecode": extension(value.stats, value.token_ids)})
                if usage_on:
                    yield _sse(head.usage_chunk(len(job.prompt_ids), len(value.token_ids)))
                break
        yield "data: [DONE]\n\n"


class _ClientGone(Exception):
    """The client disconnected while its request waited or decoded."""


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class _JobStream(StreamingResponse):
    """A streamed response that cancels its job however the stream ends (a client that
    disconnects mid-stream makes the write fail)."""

    def __init__(self, content: AsyncIterator[str], job: Job, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()
