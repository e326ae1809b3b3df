"""``ept-fast serve`` against a real server: uvicorn on 127.0.0.1 in a subprocess (always
stopped), spoken to with httpx and the ``openai`` client; every answer checked against
``ept-fast predict`` on the same rows and adapters."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from ept_fast.cli import main as cli_main

from helpers import needs_modules, needs_offline_data

pytestmark = [needs_offline_data, needs_modules("fastapi", "uvicorn", "httpx")]
httpx = pytest.importorskip("httpx")
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _train(tiny_models, files, out, *extra):
    assert cli_main(["train", "--model", str(tiny_models / "bert"), "--train-file", files[0], "--validation-file",
                     files[1], "--test-file", files[2], "--output-dir", str(out), "--task", "sst2",
                     "--num-virtual-tokens", "4", "--max-length", "16", "--r", "2", "--num-spaces", "2",
                     "--space-rank", "2", "--prompt-init", "RANDOM_VOCAB", "--batch-size", "8", "--max-steps", "2",
                     "--eval-steps", "2", "--device", "cpu", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def adapters(tiny_models, sst2_files, tmp_path_factory):
    """Four classifier adapters on the tiny BERT (different seeds and methods), one more under the
    runtime root, one whose prompt overflows the backbone's positions on long inputs, and two
    text-to-text adapters on the tiny T5."""
    root = tmp_path_factory.mktemp("adapters")
    for index, name in enumerate(("a", "b", "c", "d")):
        _train(tiny_models, sst2_files, root / name, "--seed", str(index), *(["--method", "dept", "--num-spaces",
                                                                            "0"] if name == "d" else []))
    _train(tiny_models, sst2_files, root / "runtime" / "e", "--seed", "9")
    # 120 prompt rows + up to 16 tokens > the tiny BERT's 128 positions: inputs of over 8 tokens fail in the model.
    _train(tiny_models, sst2_files, root / "overflow", "--num-virtual-tokens", "120", "--max-steps", "1",
           "--eval-steps", "1")
    for name, tokens in (("t5a", "3"), ("t5b", "2")):
        _train(tiny_models, sst2_files, root / name, "--model", str(tiny_models / "t5"), "--max-new-tokens", tokens,
               "--seed", str(len(name)) if name == "t5a" else "5")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(*options):
    """A running ``ept-fast serve`` (its base URL); stopped whatever happens."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "ept_fast.cli", "serve", "--port", str(port), "--device", "cpu",
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {process.stdout.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the server did not start in 120 s")
            time.sleep(0.2)
        server.process = process
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _texts(sst2_files):
    return [json.loads(line)["sentence"] for line in open(sst2_files[2])]


def _predicted(adapters, names, texts, tmp_path, key="score"):
    """What ``ept-fast predict`` answers for each (adapter, text): (prediction, score or generated)."""
    rows = [{"adapter": name, "sentence": text} for name in names for text in texts]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(row) + "\n" for row in rows))
    served = [option for name in names for option in ("--adapter", f"{name}={adapters / name}")]
    assert cli_main(["predict", *served, "--input-file", str(requests), "--output-file", str(tmp_path / "out.jsonl"),
                     "--device", "cpu"]) == 0  # the T5 adapters generate the 3 tokens they were trained with
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    return {(row["adapter"], row["sentence"]): (p["prediction"], p[key]) for row, p in zip(rows, out)}


@pytest.fixture(scope="module")
def classifiers(adapters):
    options = [o for name in "abcd" for o in ("--adapter", f"{name}={adapters / name}")]
    with server(*options, "--adapter", f"overflow={adapters / 'overflow'}", "--api-key", KEY,
                "--allow-runtime-adapters", "--adapter-root", str(adapters / "runtime"), "--max-request-rows", "8",
                "--max-wait-ms", "20") as url:
        yield url


def test_models_health_and_classify_answer_as_predict_does(classifiers, adapters, sst2_files, tmp_path):
    client = httpx.Client(base_url=classifiers, headers=AUTH, timeout=60)
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["a", "b", "c", "d", "overflow"]
    assert models[0]["labels"] == ["negative", "positive"] and models[0]["task_type"] == "SEQ_CLS"
    texts = _texts(sst2_files)
    expected = _predicted(adapters, "abcd", texts, tmp_path)
    for name in "abcd":
        response = client.post("/v1/classify", json={"model": name, "input": texts[:8]})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["object"] == "list" and answer["model"] == name and answer["usage"]["prompt_tokens"] > 0
        for text, row in zip(texts, answer["data"]):
            label, score = expected[(name, text)]
            assert row["label"] == label and row["num_classes"] == 2
            assert abs(max(row["probs"]) - score) < 1e-5 and abs(sum(row["probs"]) - 1) < 1e-5
    one = client.post("/v1/classify", json={"model": "b", "input": texts[0]}).json()["data"]
    assert len(one) == 1 and one[0]["label"] == expected[("b", texts[0])][0]
    metrics = client.get("/metrics").text
    assert 'ept_fast_requests_total{endpoint="/v1/classify",code="200"}' in metrics
    assert "ept_fast_batch_rows_count" in metrics and "ept_fast_request_seconds_bucket" in metrics
    assert 'ept_fast_rows_total{adapter="a"}' in metrics and "ept_fast_queue_rows 0" in metrics


def test_bad_requests_get_clear_errors(classifiers, sst2_files):
    client = httpx.Client(base_url=classifiers, headers=AUTH, timeout=60)
    refused = httpx.get(f"{classifiers}/v1/models")  # no key
    assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
    unknown = client.post("/v1/classify", json={"model": "zz", "input": "fine"})
    assert unknown.status_code == 404
    assert "no adapter named 'zz'; loaded: ['a', 'b', 'c', 'd', 'overflow']" in unknown.json()["error"]["message"]
    assert client.post("/v1/classify", json={"input": "fine"}).status_code == 422  # no model
    assert client.post("/v1/classify", json={"model": "a", "input": 3}).status_code == 422
    assert client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422
    long = " ".join(["fine"] * 40)
    too_long = client.post("/v1/classify", json={"model": "a", "input": ["good", long]})
    assert too_long.status_code == 400
    assert "input[1]: 42 tokens; adapter 'a' reads at most 16 (its max_length)" in too_long.json()["error"]["message"]
    assert client.post("/v1/classify", json={"model": "a", "input": [long], "truncate": True}).status_code == 200
    huge = "good " * 2000
    refused = client.post("/v1/classify", json={"model": "a", "input": [huge]})
    assert refused.status_code == 400 and "input[0]: 2002 tokens" in refused.json()["error"]["message"]
    cut = client.post("/v1/classify", json={"model": "a", "input": [huge], "truncate": True}).json()
    assert cut["usage"]["prompt_tokens"] == 16  # the tokens read, not the ones sent
    # Few tokens in many characters (the tokenizer drops whitespace) are read whole, not cut.
    spaced = client.post("/v1/classify", json={"model": "a", "input": ["good" + " " * 2000 + "bad"]})
    assert spaced.status_code == 200 and spaced.json()["usage"]["prompt_tokens"] == 4
    for blank in ("", "  \t\n"):
        empty = client.post("/v1/classify", json={"model": "a", "input": ["good", blank]})
        assert empty.status_code == 400 and empty.json()["error"]["message"].startswith("input[1]: ")
        assert "empty" in empty.json()["error"]["message"]
    for body, field in (({"model": "a", "input": "good", "truncate": "yes"}, "truncate"),
                        ({"model": "a", "input": "good", "truncate": 1}, "truncate"),
                        ({"model": "a", "input": "good", "truncat": True}, "truncat"),
                        ({"model": 3, "input": "good"}, "model")):
        strict = client.post("/v1/classify", json=body)
        assert strict.status_code == 422 and f"body.{field}" in strict.json()["error"]["message"], strict.text
    not_utf8 = client.post("/v1/classify", content=b'{"model": "a", "input": "caf\xe9"}',
                           headers={"content-type": "application/json"})
    assert not_utf8.status_code == 422 and "not JSON text in UTF-8" in not_utf8.json()["error"]["message"]
    form = client.post("/v1/classify", content=b"model=a", headers={"content-type": "text/plain"})
    assert form.status_code == 422 and "Content-Type 'text/plain'" in form.json()["error"]["message"]
    cased = client.post("/v1/classify", content=b'{"model": "a", "input": "good", "truncate": "yes"}',
                        headers={"content-type": "Application/JSON; charset=utf-8"})  # JSON: the field is named
    assert cased.status_code == 422 and "body.truncate" in cased.json()["error"]["message"]
    big = client.post("/v1/classify", json={"model": "a", "input": ["x" * 2**20] * 5})
    assert big.status_code == 413 and "this server takes at most 4194304 a request (--max-request-bytes)" in \
        big.json()["error"]["message"]
    nowhere = client.get("/v1/nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["message"] == "GET /v1/nowhere: Not Found"
    lowercase = httpx.get(f"{classifiers}/v1/models", headers={"Authorization": f"bearer {KEY}"})
    assert lowercase.status_code == 200  # the scheme's case does not matter (RFC 7235)
    surrogate = client.post("/v1/classify", content=b'{"model": "a", "input": ["\\udc00"]}',
                            headers={"content-type": "application/json"})
    assert surrogate.status_code == 400 and "not UTF-8 text" in surrogate.json()["error"]["message"]
    too_many = client.post("/v1/classify", json={"model": "a", "input": ["good"] * 9})
    assert too_many.status_code == 413 and "at most 8 a request" in too_many.json()["error"]["message"]
    pair = client.post("/v1/classify", json={"model": "a", "input": [["good", "bad"]]})
    assert pair.status_code == 400 and "reads 1 text(s) per input (sentence), got 2" in pair.json()["error"]["message"]
    wrong_kind = client.post("/v1/completions", json={"model": "a", "prompt": "fine"})
    assert wrong_kind.status_code == 400 and "ask /v1/classify" in wrong_kind.json()["error"]["message"]


def test_metrics_count_unknown_paths_under_one_label(classifiers):
    client = httpx.Client(base_url=classifiers, headers=AUTH, timeout=60)
    for path in ('/x"} 1e9', "/y%0Ainjected", "/z"):
        assert client.get(path).status_code == 404
    assert httpx.get(f'{classifiers}/w"', timeout=60).status_code == 401  # no key
    metrics = client.get("/metrics").text
    assert 'ept_fast_requests_total{endpoint="other",code="404"}' in metrics
    assert 'ept_fast_requests_total{endpoint="other",code="401"}' in metrics
    assert "1e9" not in metrics and "injected" not in metrics


def test_the_batcher_says_whether_its_worker_still_answers():
    from ept_fast.server.batcher import DynamicBatcher

    answered = []
    batcher = DynamicBatcher(lambda rows: [row * 2 for row in rows], max_batch_size=4, max_wait_s=0.001)
    assert batcher.working  # /health answers 200 only while it is
    batcher.submit([1, 2], lambda result, error: answered.append((result, error)))
    batcher.close()
    assert answered == [([2, 4], None)] and not batcher.working


def test_metric_label_values_are_escaped():
    from ept_fast.server.metrics import ServerMetrics

    metrics = ServerMetrics(lambda: 0)
    metrics.request('/a"b\\c\nd', 200, 0.1)
    assert 'endpoint="/a\\"b\\\\c\\nd",code="200"} 1' in metrics.render()


def test_concurrent_requests_of_several_inputs_each_get_their_answers(adapters, tmp_path):
    """Requests counted on the event loop while the worker encodes batches: one tokenizer shared by
    the two threads used to switch truncation and padding under the other (3 % of answers failed)."""
    texts = [" ".join(["good", "bad", "fine", "movie"][j % 4] for j in range(1 + i % 12)) for i in range(64)]
    expected = _predicted(adapters, "ab", texts, tmp_path)
    jobs = [("ab"[i % 2], [texts[(i * 5 + k) % len(texts)] for k in range(8)]) for i in range(400)]
    with server("--adapter", f"a={adapters / 'a'}", "--adapter", f"b={adapters / 'b'}", "--max-wait-ms", "2") as url:
        local = threading.local()

        def ask(job):
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, timeout=120)
            name, inputs = job
            return local.client.post("/v1/classify", json={"model": name, "input": inputs})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, jobs))
    assert [a.status_code for a in answers] == [200] * len(jobs), next(a.text for a in answers if a.status_code != 200)
    for (name, inputs), answer in zip(jobs, answers):
        assert [row["label"] for row in answer.json()["data"]] == [expected[(name, text)][0] for text in inputs]


def test_a_failing_batch_answers_its_requests_with_500_and_the_server_goes_on(classifiers):
    client = httpx.Client(base_url=classifiers, headers=AUTH, timeout=60)
    failing = client.post("/v1/classify", json={"model": "overflow", "input": ["good " * 10]})
    assert failing.status_code == 500
    assert "the batch holding this request failed: ValueError" in failing.json()["error"]["message"]
    assert client.post("/v1/classify", json={"model": "overflow", "input": ["good"]}).status_code == 200
    assert client.get("/health").status_code == 200


def test_adapters_load_and_unload_at_run_time(classifiers, adapters, sst2_files):
    client = httpx.Client(base_url=classifiers, headers=AUTH, timeout=60)
    outside = client.post("/v1/load_adapter", json={"adapter_name": "x", "adapter_path": str(adapters / "a")})
    assert outside.status_code == 403 and "outside --adapter-root" in outside.json()["error"]["message"]
    missing = client.post("/v1/load_adapter", json={"adapter_name": "x", "adapter_path": "nowhere"})
    assert missing.status_code == 400
    nul = client.post("/v1/load_adapter", json={"adapter_name": "x", "adapter_path": "e\u0000x"})
    assert nul.status_code == 400 and nul.json()["error"]["message"].startswith("adapter_path: not a path")
    assert client.post("/v1/load_adapter", json={"adapter_name": "a", "adapter_path": "e"}).status_code == 409
    loaded = client.post("/v1/load_adapter", json={"adapter_name": "e", "adapter_path": "e"})
    assert loaded.status_code == 200, loaded.text
    assert "e" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    texts = _texts(sst2_files)
    assert client.post("/v1/classify", json={"model": "e", "input": texts[:4]}).status_code == 200
    # Requests for e in flight while it is unloaded: every one is answered, later ones are refused.
    with ThreadPoolExecutor(16) as pool:
        pending = [pool.submit(client.post, "/v1/classify", json={"model": "e", "input": [text]}) for text in texts]
        time.sleep(0.05)
        unloaded = client.post("/v1/unload_adapter", json={"adapter_name": "e"})
        answers = [future.result() for future in pending]
    assert unloaded.status_code == 200
    assert all(answer.status_code in (200, 404) for answer in answers), [a.text for a in answers
                                                                         if a.status_code not in (200, 404)]
    assert sum(answer.status_code == 200 for answer in answers) >= 1
    assert client.post("/v1/classify", json={"model": "e", "input": "fine"}).status_code == 404
    assert client.post("/v1/unload_adapter", json={"adapter_name": "e"}).status_code == 404


def test_load_test_32_clients_1000_requests_across_4_adapters(classifiers, adapters, sst2_files, tmp_path):
    texts = _texts(sst2_files)
    expected = _predicted(adapters, "abcd", texts, tmp_path)
    jobs = [("abcd"[i % 4], texts[(i * 7) % len(texts)]) for i in range(1000)]
    answers = [None] * len(jobs)

    def client_loop(worker: int):
        with httpx.Client(base_url=classifiers, headers=AUTH, timeout=120) as client:
            for index in range(worker, len(jobs), 32):
                name, text = jobs[index]
                response = client.post("/v1/classify", json={"model": name, "input": [text]})
                assert response.status_code == 200, response.text
                answers[index] = response.json()["data"]

    threads = [threading.Thread(target=client_loop, args=(worker,)) for worker in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer is not None and len(answer) == 1 for answer in answers)  # each answered, once
    for (name, text), answer in zip(jobs, answers):
        label, score = expected[(name, text)]
        assert answer[0]["label"] == label and abs(max(answer[0]["probs"]) - score) < 1e-5
    metrics = httpx.get(f"{classifiers}/metrics", headers=AUTH).text
    batches = next(line for line in metrics.splitlines() if line.startswith("ept_fast_batch_rows_count"))
    rows = next(line for line in metrics.splitlines() if line.startswith("ept_fast_batch_rows_sum"))
    assert float(rows.split()[1]) / float(batches.split()[1]) > 1  # requests shared batches
    assert httpx.get(f"{classifiers}/health", headers=AUTH).status_code == 200


def test_completions_with_the_openai_client(adapters, sst2_files, tmp_path):
    openai = pytest.importorskip("openai")
    texts = _texts(sst2_files)
    expected = _predicted(adapters, ["t5a", "t5b"], texts[:4], tmp_path, key="generated")
    with server("--adapter", f"t5a={adapters / 't5a'}", "--adapter", f"t5b={adapters / 't5b'}") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for name in ("t5a", "t5b"):
            completion = client.completions.create(model=name, prompt=texts[:4], max_tokens=3)
            assert completion.model == name and len(completion.choices) == 4
            assert [c.text for c in completion.choices] == [expected[(name, text)][1] for text in texts[:4]]
        with pytest.raises(openai.NotFoundError, match="no adapter named 'zz'"):
            client.completions.create(model="zz", prompt="fine")
        with pytest.raises(openai.BadRequestError, match="max_tokens: expected an integer >= 1, got 0"):
            client.completions.create(model="t5a", prompt="fine", max_tokens=0)
        # A client's default max_tokens (16, 256) is not refused: an adapter generates at most what it trained with.
        capped = client.completions.create(model="t5a", prompt=texts[:4], max_tokens=256)
        assert [c.text for c in capped.choices] == [expected[("t5a", text)][1] for text in texts[:4]]
        for option in ({"stream": True}, {"n": 2}, {"echo": True}, {"logprobs": 1}, {"stop": ["."]},
                       {"logit_bias": {"5": 1}}, {"presence_penalty": 0.5}):
            with pytest.raises(openai.BadRequestError, match=f"{next(iter(option))}: not supported"):
                client.completions.create(model="t5a", prompt="fine", **option)
        # Sampling options are ignored; the others are taken when they ask for nothing.
        assert client.completions.create(model="t5a", prompt="fine", temperature=0.7, n=1).choices
        blank = httpx.post(f"{url}/v1/completions", json={"model": "t5a", "prompt": ["fine", ""]})
        assert blank.status_code == 400 and blank.json()["error"]["message"].startswith("prompt[1]: ")
        boolean = httpx.post(f"{url}/v1/completions", json={"model": "t5a", "prompt": "fine", "max_tokens": True})
        assert boolean.status_code == 422 and "body.max_tokens" in boolean.json()["error"]["message"]
        off = httpx.post(f"{url}/v1/load_adapter", json={"adapter_name": "x", "adapter_path": "y"})
        assert off.status_code == 403 and "--allow-runtime-adapters" in off.json()["error"]["message"]
        assert httpx.post(f"{url}/v1/classify", json={"model": "t5a", "input": "fine"}).status_code == 400


def test_each_adapter_generates_what_it_was_trained_with_unless_max_new_tokens_says(adapters, sst2_files, tmp_path):
    """t5a was trained to generate 3 tokens and t5b 2: each answers as predict does, a runtime-loaded
    adapter included (predict itself generates each adapter's own length), and --max-new-tokens 1
    sets every adapter's."""
    texts = _texts(sst2_files)[:4]
    own = _predicted(adapters, ["t5a", "t5b"], texts, tmp_path, key="generated")
    for options in ((), ("--max-new-tokens", "1")):
        with server("--adapter", f"t5a={adapters / 't5a'}", *options, "--allow-runtime-adapters",
                    "--adapter-root", str(adapters)) as url:
            loaded = httpx.post(f"{url}/v1/load_adapter", json={"adapter_name": "t5b", "adapter_path": "t5b"},
                                timeout=60)
            assert loaded.status_code == 200, loaded.text
            for name, most in (("t5a", 3), ("t5b", 2)):
                answer = httpx.post(f"{url}/v1/completions", json={"model": name, "prompt": texts}, timeout=60).json()
                tokens = [len(choice["text"].split()) for choice in answer["choices"]]
                if options:
                    assert max(tokens) <= 1 and answer["usage"]["completion_tokens"] <= len(texts)
                else:
                    assert [choice["text"] for choice in answer["choices"]] == [own[(name, t)][1] for t in texts]
                    assert answer["usage"]["completion_tokens"] <= most * len(texts)


def test_sigterm_answers_the_queue_before_exit(adapters, sst2_files):
    texts = _texts(sst2_files)
    with server("--adapter", f"a={adapters / 'a'}", "--max-wait-ms", "1500", "--max-batch-size", "64") as url:
        process = server.process
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(httpx.post, f"{url}/v1/classify", json={"model": "a", "input": [text]}, timeout=60)
                       for text in texts[:8]]
            time.sleep(0.5)  # the requests wait in the queue (1.5 s) when the signal comes
            process.send_signal(signal.SIGTERM)
            codes = [future.result().status_code for future in pending]
        assert codes == [200] * 8
        assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    with server("--adapter", f"a={adapters / 'a'}") as url:
        server.process.send_signal(signal.SIGINT)  # Ctrl-C: a quiet exit, no traceback
        assert server.process.wait(30) == 0
        assert "Traceback" not in server.process.stdout.read()


def test_port_0_listens_on_a_free_port_and_says_which(adapters):
    process = subprocess.Popen([sys.executable, "-m", "ept_fast.cli", "serve", "--port", "0", "--device", "cpu",
                                "--adapter", f"a={adapters / 'a'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = next(line for line in process.stdout if line.startswith("ept-fast serve:"))
        port = int(line.rsplit(":", 1)[1])
        assert port > 0, line
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(30)


def test_serve_options_are_checked(adapters, capsys):
    assert cli_main(["serve"]) == 2
    assert "--adapter: expected at least one NAME=PATH, got none" in capsys.readouterr().err
    a = f"a={adapters / 'a'}"
    assert cli_main(["serve", "--adapter", a, "--port", "70000"]) == 2
    assert "--port: expected a port from 0 (any free one) to 65535, got 70000" in capsys.readouterr().err
    for wait in ("inf", "1e13", "-1", "nan"):
        assert cli_main(["serve", "--adapter", a, "--max-wait-ms", wait]) == 2
        assert "--max_wait_ms: expected a number from 0 to 60000 (a minute)" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli_main(["serve", "--adapter", a, "--port", str(taken.getsockname()[1])]) == 2
        assert f"--port: cannot listen on 127.0.0.1:{taken.getsockname()[1]}" in capsys.readouterr().err
    assert cli_main(["serve", "--adapter", f"a={adapters / 'a'}", "--allow-runtime-adapters"]) == 2
    assert "--adapter_root: --allow-runtime-adapters needs a folder" in capsys.readouterr().err
    assert cli_main(["serve", "--adapter", f"a={adapters / 'a'}", "--adapter", f"t={adapters / 't5a'}"]) == 2
    assert "the adapters were trained on different backbones" in capsys.readouterr().err
