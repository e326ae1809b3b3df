"""The HTTP API of ``ept-fast serve``, in the conventions of OpenAI-compatible servers:
``GET /v1/models``, ``POST /v1/classify`` (classifier adapters; vLLM's shape: a label and the
probabilities per input), ``POST /v1/completions`` (generative adapters; ``model`` names the
adapter), ``POST /v1/load_adapter`` and ``/v1/unload_adapter`` (with --allow-runtime-adapters,
from under --adapter-root only), ``GET /health`` and ``GET /metrics`` (Prometheus)."""

import asyncio
import copy
import dataclasses
import hmac
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

from ..adapters import check_adapter_name
from ..config import TaskType
from ..tasks import Task, format_input
from ..training.data import Collator
from ..training.options import MachineArguments, ModelArguments, option
from ..training.prediction import adapter_collator, predict_rows
from ..training.serving import (
    ServedAdapters,
    check_served_together,
    generation_length_of,
    load_served_model,
    merge,
    read_served,
)
from .batcher import DynamicBatcher
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)

MOST_WAIT_MS = 60_000.0  # a minute: longer, a request would wait on a batch longer than any client does
# The options an OpenAI client may send to /v1/completions that change what is answered, with the
# value that asks for nothing: anything else is refused, not ignored. (Sampling options are ignored:
# decoding is greedy, as the class docstring of CompletionRequest says.)
UNSUPPORTED_COMPLETION_OPTIONS = {"stream": (None, False), "n": (None, 1), "best_of": (None, 1), "echo": (None, False),
                                  "logprobs": (None,), "suffix": (None, ""), "stop": (None, "", []),
                                  "logit_bias": (None, {}), "frequency_penalty": (None, 0, 0.0),
                                  "presence_penalty": (None, 0, 0.0)}


@dataclasses.dataclass
class ServeArguments(ServedAdapters, ModelArguments, MachineArguments):
    """The batching and the HTTP server.

    Every option of ``ept-fast serve``."""

    host: str = option("127.0.0.1", "the address to listen on")
    port: int = option(8000, "the port to listen on")
    max_batch_size: int = option(32, "the most rows run through the backbone at once, across adapters")
    max_wait_ms: float = option(10.0, "the longest a request waits for others to share its batch (at most "
                                      f"{MOST_WAIT_MS:.0f})")
    max_request_rows: int = option(64, "the most inputs one request may carry (more: 413)")
    max_request_bytes: int = option(4 * 2**20, "the largest request body, in bytes (larger: 413)")
    allow_runtime_adapters: bool = option(False, "enable POST /v1/load_adapter and /v1/unload_adapter")
    adapter_root: Optional[str] = option(help="the folder runtime-loaded adapters must be under (needed with "
                                              "--allow-runtime-adapters)")
    api_key: Optional[str] = option(help="a key every request must send (Authorization: Bearer KEY); default: "
                                         "the EPT_FAST_API_KEY environment variable, else none")

    def __post_init__(self):
        super().__post_init__()
        for name, least in (("max_batch_size", 1), ("max_request_rows", 1), ("max_request_bytes", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name}: expected an integer >= {least}, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port: expected a port from 0 (any free one) to 65535, got {self.port}")
        if not 0 <= self.max_wait_ms <= MOST_WAIT_MS:
            raise ValueError(f"--max_wait_ms: expected a number from 0 to {MOST_WAIT_MS:.0f} (a minute), got "
                             f"{self.max_wait_ms}")
        if self.allow_runtime_adapters and not (self.adapter_root and Path(self.adapter_root).is_dir()):
            raise ValueError(f"--adapter_root: --allow-runtime-adapters needs a folder to load adapters from, got "
                             f"{self.adapter_root!r}")
        self.api_key = self.api_key or os.environ.get("EPT_FAST_API_KEY") or None


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with HTTP status ``code``."""

    def __init__(self, code: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.kind = code, message, kind


class Served:
    """The model, its adapters and the batcher: what the endpoints share. The worker thread
    alone touches the model and ``tokenizer``, and changes ``tasks``, ``configs`` and
    ``lengths`` (the tokens each adapter generates). Requests are tokenized to be counted with
    another copy, ``counting_tokenizer`` (a fast tokenizer's truncation and padding are settings
    of the one object, so two threads sharing it change each other's), by one ``counter``
    thread, so that a long input does not hold up the event loop. ``accepting`` (the adapters a
    request may name) and ``loading`` (the names being loaded) change on the event loop."""

    def __init__(self, args: ServeArguments):
        self.device = args.run_device()
        self.args = args
        self.model, self.tokenizer, self.tasks, self.configs = load_served_model(args)
        self.lengths = {name: generation_length_of(args, self.model, name) for name in self.tasks}
        self.counting_tokenizer = copy.deepcopy(self.tokenizer)
        self.counter = ThreadPoolExecutor(1, thread_name_prefix="ept-fast-count")
        self.model.to(self.device).eval()
        for name in self.tasks:
            self.collator(name)  # refuses a --max-new-tokens that leaves a causal LM's input no room
        self.accepting, self.loading = set(self.tasks), set()
        self.started = int(time.time())
        self.batcher = DynamicBatcher(self._run, args.max_batch_size, args.max_wait_ms / 1000)
        self.metrics = ServerMetrics(lambda: self.batcher.queued_rows)

    @property
    def task_type(self) -> TaskType:
        return self.model.task_type

    def collator(self, name: str) -> Collator:
        """Adapter ``name``'s collator, for the counter thread (it tokenizes with ``counting_tokenizer``)."""
        return adapter_collator(self.model, self.counting_tokenizer, self.tasks[name], name, self.lengths[name])

    def _run(self, rows):
        answers = predict_rows(self.model, self.tokenizer, self.tasks, rows, self.args.max_batch_size, self.device,
                               self.lengths, autocast=lambda: self.args.autocast(self.device))
        self.metrics.batch([name for name, _ in rows])
        return answers

    async def _through_worker(self, submit) -> object:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(result, error):
            loop.call_soon_threadsafe(_settle, future, result, error)

        submit(done)
        return await future

    async def predict(self, rows) -> list:
        return await self._through_worker(lambda done: self.batcher.submit(rows, done))

    async def change(self, fn) -> object:
        return await self._through_worker(lambda done: self.batcher.change(fn, done))

    # Runs in the worker thread, between batches.
    def add(self, name: str, path: Path) -> None:
        config, task = read_served(name, path, "adapter_path")
        check_served_together({**self.configs, name: config}, {**self.tasks, name: task}, self.args.model is not None,
                              "adapter_path")
        self.model.load_adapter(path, adapter_name=name)
        try:
            length = generation_length_of(self.args, self.model, name)
            adapter_collator(self.model, self.tokenizer, task, name, length)  # room for a causal LM's input
            self.model.to(self.device)
            merge(self.model, name)
        except Exception:
            self.model.delete_adapter(name)  # nothing of a refused or failed load stays
            raise
        self.configs[name], self.tasks[name], self.lengths[name] = config, task, length

    def remove(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.configs[name], self.tasks[name], self.lengths[name]


def _settle(future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def create_app(served: Served):
    """The FastAPI app over ``served``; the batcher is closed (the queue answered first) when the
    server shuts down."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException

    from .schemas import ClassifyRequest, CompletionRequest, LoadRequest, UnloadRequest

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, served.batcher.close)
        served.counter.shutdown()

    app = FastAPI(title="ept_fast", lifespan=lifespan)
    args = served.args

    def error_body(code: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=code)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return error_body(error.code, error.message, error.kind)

    @app.exception_handler(RequestValidationError)
    async def malformed(request, error: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if request.method == "POST" and not (media == "application/json" or media.endswith("+json")):
            return error_body(422, f"malformed request: expected a JSON body (Content-Type: application/json), got "
                                   f"Content-Type {content_type or 'none'!r}", "invalid_request_error")
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        return error_body(422, f"malformed request: {problems}", "invalid_request_error")

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        if error.status_code == 400:  # FastAPI's answer to a body it cannot decode
            return error_body(422, "malformed request: body: not JSON text in UTF-8", "invalid_request_error")
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(error.status_code, "invalid_request_error")
        return error_body(error.status_code, f"{request.method} {request.url.path}: {error.detail}", kind)

    endpoints = set()  # the paths a route serves: filled once the routes are declared, below

    def authorized(request: Request) -> bool:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), args.api_key.encode())

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next):
        started = time.perf_counter()
        size = request.headers.get("content-length", "")
        if args.api_key and not authorized(request):
            response = error_body(401, "a valid API key is needed (Authorization: Bearer KEY)", "authentication_error")
        elif size.isdigit() and int(size) > args.max_request_bytes:
            response = error_body(413, f"body: {int(size)} bytes; this server takes at most {args.max_request_bytes} a "
                                       f"request (--max-request-bytes)", "invalid_request_error")
        else:
            try:
                response = await call_next(request)
            except Exception as error:  # a bug: answered in the API's shape, logged, and counted
                logger.exception("%s %s failed", request.method, request.url.path)
                response = error_body(500, f"internal error: {type(error).__name__}: {error}", "server_error")
        # Paths no route serves are counted under one label: each would otherwise add a series.
        path = request.url.path if request.url.path in endpoints else "other"
        served.metrics.request(path, response.status_code, time.perf_counter() - started)
        return response

    def check_served(name: str, field: str) -> None:
        """A 404 naming ``field`` unless adapter ``name`` is served."""
        if name not in served.accepting:
            raise ApiError(404, f"{field}: no adapter named {name!r}; loaded: {sorted(served.accepting)}",
                           "not_found_error")

    def adapter(name: str, kinds) -> str:
        check_served(name, "model")
        if served.task_type not in kinds:
            endpoint = "/v1/classify" if served.task_type is TaskType.SEQ_CLS else "/v1/completions"
            raise ApiError(400, f"model: adapter {name!r} is {served.task_type.value}; ask {endpoint}")
        return name

    async def rows_of(name: str, inputs: list, truncate: bool, field: str):
        """(rows, tokens read, task) of a request whose inputs are its ``field``: everything that needs the
        adapter is taken before the request is queued (an unload may remove the adapter once the
        request is answered)."""
        if not inputs:
            raise ApiError(422, f"{field}: expected at least one input, got none")
        if len(inputs) > args.max_request_rows:
            raise ApiError(413, f"{field}: {len(inputs)} inputs; this server takes at most {args.max_request_rows} "
                                f"a request (--max-request-rows)")
        task: Task = served.tasks[name]
        collate = served.collator(name)
        examples = []
        for index, item in enumerate(inputs):
            texts = [item] if isinstance(item, str) else list(item)
            if len(texts) != len(task.fields):
                raise ApiError(400, f"{field}[{index}]: adapter {name!r} reads {len(task.fields)} text(s) per input "
                                    f"({', '.join(task.fields)}), got {len(texts)}")
            for text in texts:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:
                    raise ApiError(400, f"{field}[{index}]: not UTF-8 text ({error.reason} at character "
                                        f"{error.start})") from None
            try:
                examples.append(format_input(task, dict(zip(task.fields, texts))))
            except ValueError as error:  # a blank text
                raise ApiError(400, f"{field}[{index}]: {error}") from None
        lengths = await asyncio.get_running_loop().run_in_executor(served.counter, collate.input_lengths, examples)
        check_served(name, "model")  # unloaded while the request was counted?
        for index, length in enumerate(lengths):
            if length > collate.input_limit and not truncate:
                raise ApiError(400, f"{field}[{index}]: {length} tokens; adapter {name!r} reads at most "
                                    f"{collate.input_limit} (its max_length); shorten it or send \"truncate\": true")
        tokens = sum(min(length, collate.input_limit) for length in lengths)
        return [(name, example) for example in examples], tokens, task

    @app.get("/health")
    async def health():
        if not served.batcher.working:
            raise ApiError(503, "the batching worker has stopped; restart the server", "server_error")
        return {"status": "ok", "adapters": len(served.accepting), "queued_rows": served.batcher.queued_rows}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(served.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        data = []
        for name in sorted(served.accepting):
            task = served.tasks[name]
            data.append({"id": name, "object": "model", "created": served.started, "owned_by": "ept_fast",
                         "task_type": served.task_type.value, "method": served.configs[name].get("method"),
                         "max_length": served.configs[name].get("max_length"), "task": task.name,
                         "labels": list(task.label_names) if task.label_names else None})
        return {"object": "list", "data": data}

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest):
        name = adapter(request.model, (TaskType.SEQ_CLS,))
        inputs = [request.input] if isinstance(request.input, str) else request.input
        rows, tokens, task = await rows_of(name, inputs, request.truncate, "input")
        answers = await _answered(served.predict(rows))
        data = []
        for index, answer in enumerate(answers):
            label = answer["label"]
            entry = {"index": index, "label": task.label_names[label] if task.label_names else label}
            if "probs" in answer:
                entry.update(probs=answer["probs"], num_classes=len(answer["probs"]))
            data.append(entry)
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": name,
                "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        name = adapter(request.model, (TaskType.SEQ_2_SEQ_LM, TaskType.CAUSAL_LM))
        for key, nothing in UNSUPPORTED_COMPLETION_OPTIONS.items():
            value = getattr(request, key, None)
            if not any(value == asked and type(value) is type(asked) for asked in nothing):
                raise ApiError(400, f"{key}: not supported by ept-fast serve (it answers each prompt once, whole, "
                                    f"greedily decoded); leave it out, got {value!r}")
        if request.max_tokens is not None and request.max_tokens < 1:
            raise ApiError(400, f"max_tokens: expected an integer >= 1, got {request.max_tokens}")
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        rows, prompt_tokens, _ = await rows_of(name, prompts, request.truncate, "prompt")
        # The adapter generates what it was trained with (or --max-new-tokens): max_tokens can only cut that.
        limit = min(request.max_tokens or served.lengths[name], served.lengths[name])
        answers = await _answered(served.predict(rows))
        choices, generated_tokens = [], 0
        for index, answer in enumerate(answers):
            ids = answer["tokens"]
            text = served.counting_tokenizer.decode(ids[:limit], skip_special_tokens=True) if len(ids) > limit \
                else answer["generated"]
            generated_tokens += min(len(ids), limit)
            choices.append({"index": index, "text": text, "logprobs": None,
                            "finish_reason": "length" if len(ids) >= limit else "stop"})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated_tokens,
                          "total_tokens": prompt_tokens + generated_tokens}}

    def runtime_adapters_allowed():
        if not args.allow_runtime_adapters:
            raise ApiError(403, "loading and unloading adapters is off; start the server with "
                                "--allow-runtime-adapters --adapter-root DIR", "permission_error")

    @app.post("/v1/load_adapter")
    async def load_adapter(request: LoadRequest):
        runtime_adapters_allowed()
        try:
            check_adapter_name(request.adapter_name, "adapter_name")
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        if request.adapter_name in served.tasks or request.adapter_name in served.loading:
            raise ApiError(409, f"adapter_name: {request.adapter_name!r} is already loaded (or being loaded)")
        try:
            request.adapter_path.encode("utf-8")
            root = Path(args.adapter_root).resolve()
            path = (root / request.adapter_path).resolve()
        except (UnicodeEncodeError, ValueError, OSError) as error:  # a surrogate, a NUL byte, a path too long
            raise ApiError(400, f"adapter_path: not a path ({error}), got {request.adapter_path!r}") from None
        if path != root and root not in path.parents:
            raise ApiError(403, f"adapter_path: {request.adapter_path!r} is outside --adapter-root", "permission_error")
        served.loading.add(request.adapter_name)
        try:
            await served.change(lambda: served.add(request.adapter_name, path))
        except (ValueError, FileNotFoundError) as error:
            raise ApiError(400, str(error)) from None
        finally:
            served.loading.discard(request.adapter_name)
        served.accepting.add(request.adapter_name)
        return {"status": "loaded", "adapter_name": request.adapter_name}

    @app.post("/v1/unload_adapter")
    async def unload_adapter(request: UnloadRequest):
        runtime_adapters_allowed()
        name = request.adapter_name
        check_served(name, "adapter_name")
        if len(served.accepting) == 1:
            raise ApiError(409, f"adapter_name: {name!r} is the only adapter served; load another one first")
        served.accepting.discard(name)  # new requests for it are refused; the queued ones are answered first
        await served.change(lambda: served.remove(name))
        return {"status": "unloaded", "adapter_name": name}

    endpoints.update(route.path for route in app.routes)
    return app


async def _answered(pending) -> list:
    """A batch's answers; a batch that failed answers its requests with a 500."""
    try:
        return await pending
    except Exception as error:
        raise ApiError(500, f"the batch holding this request failed: {type(error).__name__}: {error}",
                       "server_error") from None


def serve(args: ServeArguments) -> None:
    """Load the adapters, then serve until SIGINT or SIGTERM (which answer the queue first)."""
    try:
        import uvicorn
    except ImportError:
        raise ImportError("ept-fast serve needs FastAPI and uvicorn: pip install 'ept_fast[serve]'") from None
    sockets = bound_sockets(args.host, args.port)  # a taken port fails now, not after loading the model
    try:
        served = Served(args)
        app = create_app(served)
        port = sockets[0].getsockname()[1]  # the one chosen, for --port 0
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"ept-fast serve: {len(served.tasks)} adapter(s) ({', '.join(served.tasks)}) on "
              f"http://{host}:{port}", flush=True)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=sockets)
        except KeyboardInterrupt:  # Ctrl-C: the queue was answered on the way out, as for SIGTERM
            pass
    finally:
        for sock in sockets:
            sock.close()


def bound_sockets(host: str, port: int) -> List[socket.socket]:
    """Sockets bound to ``port`` on every address ``host`` resolves to (one port for all, the
    first one's where ``port`` is 0), not yet listening: connections are taken once the server
    serves, not while the model loads."""
    try:
        addresses = list(dict.fromkeys((family, address[:2]) for family, _, _, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)))
    except socket.gaierror as error:
        raise ValueError(f"--host: cannot resolve {host!r} ({error.strerror})") from None
    sockets: List[socket.socket] = []
    try:
        for family, (address, _) in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address, sockets[0].getsockname()[1] if len(sockets) > 1 else port))
    except OSError as error:  # taken, or an address this machine does not have
        for sock in sockets:
            sock.close()
        raise ValueError(f"--port: cannot listen on {host}:{port} ({error.strerror or error})") from None
    return sockets
