"""Throughput and latency of ``ept-fast serve``: dynamic batching (``--max-batch-size 32``)
against one row at a time (``--max-batch-size 1``), at 1, 8 and 32 concurrent clients, each
request one BBC headline for one of two adapters on the packaged MiniLM (offline):

    python benchmarks/serve_bench.py [--requests N] [--adapters DIR] [--json OUT.json]

Without --adapters it makes two untrained EPT adapters at the command line's default sizes
(speed does not depend on what they learned). Prints a markdown table."""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def make_adapters(root: Path) -> None:
    """Two adapters (topics, headlines) on the packaged MiniLM, as ept-fast train sizes them."""
    from ept_fast import get_ept_model
    from ept_fast.config import TaskType
    from ept_fast.tasks import get_task
    from ept_fast.training import TrainArguments
    from ept_fast.training.data import load_backbone, task_metadata

    task = get_task("bbc_news")
    for seed, name in enumerate(("topics", "headlines")):
        args = TrainArguments(seed=seed, output_dir=str(root / name))
        backbone, tokenizer, _ = load_backbone(args, task)
        model = get_ept_model(backbone, args.adapter_config(task, TaskType.SEQ_CLS, 384, encoder_classifier=True),
                              tokenizer=tokenizer)
        model.task_metadata = task_metadata(task, split_seed=seed)
        model.save_pretrained(root / name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, texts, clients: int, requests: int) -> dict:
    latencies, lock = [], threading.Lock()

    def client(worker: int):
        with httpx.Client(base_url=url, timeout=300) as http:
            for index in range(worker, requests, clients):
                started = time.perf_counter()
                response = http.post("/v1/classify", json={"model": ("topics", "headlines")[index % 2],
                                                            "input": [texts[index % len(texts)]], "truncate": True})
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(worker,)) for worker in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"clients": clients, "requests": requests, "requests_per_s": requests / seconds,
            "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))]}


def run_server(adapters: Path, max_batch_size: int, texts, counts, requests: int) -> list:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ept_fast.cli", "serve", "--port", str(port),
                               "--adapter", f"topics={adapters / 'topics'}", "--adapter",
                               f"headlines={adapters / 'headlines'}", "--max-batch-size", str(max_batch_size)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        measure(url, texts, 4, 16)  # warm-up
        return [{"max_batch_size": max_batch_size, **measure(url, texts, clients, requests)} for clients in counts]
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=192, help="requests per measurement")
    parser.add_argument("--adapters", type=Path, help="a folder holding topics/ and headlines/ (default: made now)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    options = parser.parse_args()
    from ept_fast.tasks import bbc_headlines

    texts = [row["text"] for row in bbc_headlines()[2]]
    adapters = options.adapters
    if adapters is None:
        import tempfile

        adapters = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        make_adapters(adapters)
    rows = []
    for max_batch_size in (32, 1):
        rows += run_server(adapters, max_batch_size, texts, (1, 8, 32), options.requests)
    print("| --max-batch-size | clients | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['max_batch_size']} | {row['clients']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.0f} | "
              f"{row['p99_ms']:.0f} |")
    if options.json:
        options.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
