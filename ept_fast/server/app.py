"""The HTTP API of ``ept-fast serve``, in the conventions of OpenAI-compatible servers:
``GET /v1/models``, ``POST /v1/classify`` (classifier adapters; vLLM's shape: a label and the
probabilities per input), ``POST /v1/completions`` (generative adapters; ``model`` names the
adapter), ``POST /v1/load_adapter`` and ``/v1/unload_adapter`` (with --allow-runtime-adapters,
from under --adapter-root only), ``GET /health`` and ``GET /metrics`` (Prometheus)."""

import asyncio
import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Optional

from ..adapters import check_adapter_name
from ..config import TaskType
from ..tasks import Task, format_input
from ..training.data import Collator
from ..training.options import MachineArguments, ModelArguments, option, trained_generation_length
from ..training.prediction import adapter_collator, predict_rows
from ..training.serving import (
    ServedAdapters,
    check_served_together,
    load_served_model,
    merge,
    read_served,
    with_generation_length,
)
from .batcher import DynamicBatcher
from .metrics import ServerMetrics


@dataclasses.dataclass
class ServeArguments(ServedAdapters, ModelArguments, MachineArguments):
    """The batching and the HTTP server.

    Every option of ``ept-fast serve``."""

    host: str = option("127.0.0.1", "the address to listen on")
    port: int = option(8000, "the port to listen on")
    max_batch_size: int = option(32, "the most rows run through the backbone at once, across adapters")
    max_wait_ms: float = option(10.0, "the longest a request waits for others to share its batch")
    max_request_rows: int = option(64, "the most inputs one request may carry (more: 413)")
    allow_runtime_adapters: bool = option(False, "enable POST /v1/load_adapter and /v1/unload_adapter")
    adapter_root: Optional[str] = option(help="the folder runtime-loaded adapters must be under (needed with "
                                              "--allow-runtime-adapters)")
    api_key: Optional[str] = option(help="a key every request must send (Authorization: Bearer KEY); default: "
                                         "the EPT_FAST_API_KEY environment variable, else none")

    def __post_init__(self):
        super().__post_init__()
        for name, least in (("max_batch_size", 1), ("max_request_rows", 1), ("port", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"--{name}: expected an integer >= {least}, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"--max_wait_ms: expected a number >= 0, got {self.max_wait_ms}")
        if self.allow_runtime_adapters and not (self.adapter_root and Path(self.adapter_root).is_dir()):
            raise ValueError(f"--adapter_root: --allow-runtime-adapters needs a folder to load adapters from, got "
                             f"{self.adapter_root!r}")
        self.api_key = self.api_key or os.environ.get("EPT_FAST_API_KEY") or None


CHARACTERS_PER_TOKEN = 50  # a bound no tokenizer reaches on text: inputs longer than this per token are refused


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with HTTP status ``code``."""

    def __init__(self, code: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.kind = code, message, kind


class Served:
    """The model, its adapters and the batcher: what the endpoints share. The worker thread
    alone touches the model; ``accepting`` (the adapters a request may name) changes on the
    event loop."""

    def __init__(self, args: ServeArguments):
        self.device = args.run_device()
        self.model, self.tokenizer, self.tasks, self.configs = load_served_model(args)
        self.args = with_generation_length(args, self.model)
        self.model.to(self.device).eval()
        self.accepting = set(self.tasks)
        self.started = int(time.time())
        self.batcher = DynamicBatcher(self._run, args.max_batch_size, args.max_wait_ms / 1000)
        self.metrics = ServerMetrics(lambda: self.batcher.queued_rows)

    @property
    def task_type(self) -> TaskType:
        return self.model.task_type

    def collator(self, name: str) -> Collator:
        return adapter_collator(self.model, self.tokenizer, self.tasks[name], name, self.args.max_new_tokens)

    def _run(self, rows):
        answers = predict_rows(self.model, self.tokenizer, self.tasks, rows, self.args.max_batch_size, self.device,
                               self.args.max_new_tokens, autocast=lambda: self.args.autocast(self.device))
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
        trained = trained_generation_length(self.model.adapter_task_metadata[name]) or 0
        if self.task_type is not TaskType.SEQ_CLS and trained > self.args.max_new_tokens:
            self.model.delete_adapter(name)
            raise ValueError(f"adapter_path: the adapter was trained to generate {trained} tokens, more than this "
                             f"server generates ({self.args.max_new_tokens}); start the server with "
                             f"--max-new-tokens {trained} or more")
        self.model.to(self.device)
        merge(self.model, name)
        self.configs[name], self.tasks[name] = config, task

    def remove(self, name: str) -> None:
        self.model.delete_adapter(name)
        del self.configs[name], self.tasks[name]


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

    from .schemas import ClassifyRequest, CompletionRequest, LoadRequest, UnloadRequest

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, served.batcher.close)

    app = FastAPI(title="ept_fast", lifespan=lifespan)
    args = served.args

    def error_body(code: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=code)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return error_body(error.code, error.message, error.kind)

    @app.exception_handler(RequestValidationError)
    async def malformed(request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        return error_body(422, f"malformed request: {problems}", "invalid_request_error")

    @app.middleware("http")
    async def guard_and_count(request: Request, call_next):
        started = time.perf_counter()
        if args.api_key and request.headers.get("authorization") != f"Bearer {args.api_key}":
            response = error_body(401, "a valid API key is needed (Authorization: Bearer KEY)", "authentication_error")
        else:
            response = await call_next(request)
        served.metrics.request(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    def adapter(name: str, kinds) -> str:
        if name not in served.accepting:
            raise ApiError(404, f"model: no adapter named {name!r}; loaded: {sorted(served.accepting)}",
                           "not_found_error")
        if served.task_type not in kinds:
            endpoint = "/v1/classify" if served.task_type is TaskType.SEQ_CLS else "/v1/completions"
            raise ApiError(400, f"model: adapter {name!r} is {served.task_type.value}; ask {endpoint}")
        return name

    def rows_of(name: str, inputs: list, truncate: bool):
        """(rows, tokens read, task) of a request: everything that needs the adapter is taken now, before
        the request waits (an unload may remove the adapter once the request is answered)."""
        if not inputs:
            raise ApiError(422, "input: expected at least one input, got none")
        if len(inputs) > args.max_request_rows:
            raise ApiError(413, f"input: {len(inputs)} inputs; this server takes at most {args.max_request_rows} a "
                                f"request (--max-request-rows)")
        task: Task = served.tasks[name]
        collate = served.collator(name)
        # A token is at least one character: past this many, an input is too long whatever it says, and
        # a truncated one is cut here, before the tokenizer spends time on what it would drop.
        most_characters = CHARACTERS_PER_TOKEN * collate.input_limit
        examples = []
        for index, item in enumerate(inputs):
            texts = [item] if isinstance(item, str) else list(item)
            if len(texts) != len(task.fields):
                raise ApiError(400, f"input[{index}]: adapter {name!r} reads {len(task.fields)} text(s) per input "
                                    f"({', '.join(task.fields)}), got {len(texts)}")
            for text in texts:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:
                    raise ApiError(400, f"input[{index}]: not UTF-8 text ({error.reason} at character "
                                        f"{error.start})") from None
                if len(text) > most_characters and not truncate:
                    raise ApiError(400, f"input[{index}]: {len(text)} characters; adapter {name!r} reads at most "
                                        f"{collate.input_limit} tokens (its max_length); shorten it or send "
                                        f"\"truncate\": true")
            texts = [text[:most_characters] for text in texts]
            examples.append(format_input(task, dict(zip(task.fields, texts))))
        lengths = collate.input_lengths(examples)
        for index, length in enumerate(lengths):
            if length > collate.input_limit and not truncate:
                raise ApiError(400, f"input[{index}]: {length} tokens; adapter {name!r} reads at most "
                                    f"{collate.input_limit} (its max_length); shorten it or send \"truncate\": true")
        tokens = sum(min(length, collate.input_limit) for length in lengths)
        return [(name, example) for example in examples], tokens, task

    @app.get("/health")
    async def health():
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
        rows, tokens, task = rows_of(name, inputs, request.truncate)
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
        if request.max_tokens is not None and not 1 <= request.max_tokens <= args.max_new_tokens:
            raise ApiError(400, f"max_tokens: expected 1 to {args.max_new_tokens} (the server's generation length: "
                                f"--max-new-tokens, else the most its adapters were trained to generate), "
                                f"got {request.max_tokens}")
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        rows, prompt_tokens, _ = rows_of(name, prompts, request.truncate)
        answers = await _answered(served.predict(rows))
        limit = request.max_tokens or args.max_new_tokens
        choices, generated_tokens = [], 0
        for index, answer in enumerate(answers):
            ids = answer["tokens"]
            text = served.tokenizer.decode(ids[:limit], skip_special_tokens=True) if len(ids) > limit \
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
        if request.adapter_name in served.tasks:
            raise ApiError(409, f"adapter_name: {request.adapter_name!r} is already loaded")
        try:
            request.adapter_path.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "adapter_path: not UTF-8 text") from None
        root = Path(args.adapter_root).resolve()
        path = (root / request.adapter_path).resolve()
        if path != root and root not in path.parents:
            raise ApiError(403, f"adapter_path: {request.adapter_path!r} is outside --adapter-root", "permission_error")
        try:
            await served.change(lambda: served.add(request.adapter_name, path))
        except (ValueError, FileNotFoundError) as error:
            raise ApiError(400, str(error)) from None
        served.accepting.add(request.adapter_name)
        return {"status": "loaded", "adapter_name": request.adapter_name}

    @app.post("/v1/unload_adapter")
    async def unload_adapter(request: UnloadRequest):
        runtime_adapters_allowed()
        name = request.adapter_name
        if name not in served.accepting:
            raise ApiError(404, f"adapter_name: no adapter named {name!r}; loaded: {sorted(served.accepting)}",
                           "not_found_error")
        if len(served.accepting) == 1:
            raise ApiError(409, f"adapter_name: {name!r} is the only adapter served; load another one first")
        served.accepting.discard(name)  # new requests for it are refused; the queued ones are answered first
        await served.change(lambda: served.remove(name))
        return {"status": "unloaded", "adapter_name": name}

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
    served = Served(args)
    app = create_app(served)
    print(f"ept-fast serve: {len(served.tasks)} adapter(s) ({', '.join(served.tasks)}) on "
          f"http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
