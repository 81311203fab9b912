"""Corpus generation through a real OpenAI-compatible server: ``transformers serve`` with the
default model (SmolLM2-135M-Instruct) on a free loopback port, started by the fixture.

- a story shard and the neutral corpus end to end through the server (concurrent requests,
  seeds, token accounting, provenance);
- the server killed mid-shard: the job fails with a clear error after its retries, and a rerun
  against a restarted server resumes from the checkpoint, losing nothing that was checkpointed;
- a loopback fault-injecting proxy in front of the real server answers HTTP 429 (with
  Retry-After) to the first requests: the client waits, retries, and the shard is complete;
- the API key, read from the environment, reaches the server but no artifact, checkpoint, log
  line or error message.

Only loopback addresses are used. The server is started once for the module (~10-30 s on a
loaded 2-core CPU) and restarted once by the kill test.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emotion_vectors.corpus.backends import BackendError, OpenAIChatBackend, make_backend
from emotion_vectors.core.config import REPO_ROOT
from emotion_vectors.corpus.generate import Checkpoint, generate_neutral, generate_story_shard, load_prompts
from emotion_vectors.corpus.leak import find_leaks

pytestmark = pytest.mark.slow

TOPICS = ["A neighbor wants to install a fence"]
# Tiny shards: 1 topic, short replies; batch size 2 so that a shard has several batches.
STORY = {
    "per_topic": 4, "per_reply": 1, "max_new_tokens": 32, "min_words": 4, "temperature": 0.9,
    "top_p": 0.95, "batch_size": 2, "oversample": 1.0, "max_rounds": 3, "allow_shortfall": True, "seed": 7,
}
KEY = "sk-ev-test-9f3Kq-never-write-this"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_available() -> tuple[bool, str]:
    from transformers.utils.import_utils import is_serve_available

    if is_serve_available():
        return True, ""
    return False, "`transformers serve` needs the transformers[serving] extra (fastapi, uvicorn, openai): run `make install`"


class ServeProcess:
    """``transformers serve`` on a loopback port, pinned to the default model on the CPU."""

    def __init__(self, model_dir: Path, log_path: Path):
        self.model_dir = str(model_dir)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180) -> None:
        import requests

        self.port = _free_port()
        cli = Path(sys.executable).with_name("transformers")
        cmd = [str(cli), "serve", self.model_dir, "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--dtype", "float32", "--log-level", "warning"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OMP_NUM_THREADS": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"transformers serve did not answer /health in {timeout} s")

    def ensure(self) -> None:
        """Running (a test that killed it and failed before restarting it leaves it dead)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    ok, reason = _serve_available()
    if not ok:
        pytest.skip(reason)
    from conftest import _ensure_default_model

    server = ServeProcess(_ensure_default_model(), tmp_path_factory.mktemp("serve") / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def story_prompts():
    return load_prompts(REPO_ROOT / "config" / "prompts" / "miniature", "story")


class FaultProxy:
    """A loopback HTTP proxy in front of a real server: answers ``status`` (with ``Retry-After``)
    to the first ``fail_first`` POSTs and forwards everything else; records every request
    (time, path, Authorization header) and the most requests it held at once."""

    def __init__(self, upstream: str, fail_first: int = 0, status: int = 429, retry_after: str | None = "1"):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.fail_first, self.status, self.retry_after = fail_first, status, retry_after
        self.seen: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _relay(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    n_post = sum(r["method"] == "POST" for r in proxy.seen)
                    fail = method == "POST" and n_post < proxy.fail_first
                    proxy.seen.append({"t": time.monotonic(), "method": method, "path": self.path, "failed": fail,
                                       "auth": self.headers.get("Authorization", "")})
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    if fail:
                        data = json.dumps({"error": {"message": "rate limited", "type": "rate_limit"}}).encode()
                        self.send_response(proxy.status)
                        if proxy.retry_after is not None:
                            self.send_header("Retry-After", proxy.retry_after)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                    conn.request(method, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    conn.close()
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def do_POST(self):  # noqa: N802 - http.server's naming
                self._relay("POST")

            def do_GET(self):  # noqa: N802
                self._relay("GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.upstream.path}"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _backend(url: str, serve: ServeProcess, **options) -> OpenAIChatBackend:
    # transformers serve samples only when the model's generation config (or the request's) says
    # do_sample; SmolLM2's does not, so without this every "sample" would be the greedy reply.
    spec = {"backend": "openai", "name": "smollm2-served", "base_url": url, "model": serve.model_dir,
            "timeout": 120, "max_concurrency": 2, "seed_honoured": False,
            "extra_body": {"generation_config": json.dumps({"do_sample": True})}, **options}
    backend = make_backend(spec)
    assert isinstance(backend, OpenAIChatBackend)
    return backend


def test_story_shard_and_neutral_corpus_through_transformers_serve(serve, story_prompts, tmp_path):
    serve.ensure()
    with FaultProxy(serve.url) as proxy:
        backend = _backend(proxy.url, serve, max_concurrency=2, price_per_mtok={"prompt": 0.5, "completion": 2.0})
        assert backend.check() == [serve.model_dir]  # the pinned server lists its model alone
        lines: list[str] = []
        shard = generate_story_shard(backend, "calm", TOPICS, STORY, story_prompts, output=tmp_path / "calm.json",
                                     log=lines.append)
        assert proxy.max_in_flight == 2, "a batch of 2 is sent as 2 concurrent requests"
    assert shard["n_stories"] >= 1 and shard["replies"] >= 4
    for s in shard["stories"]:
        assert not find_leaks(s["text"], "calm") and len(s["text"].split()) >= STORY["min_words"]
        assert isinstance(s["seed"], int) and s["reply_tokens"] is not None and s["reply_tokens"] <= 32
    seeds = [s["seed"] for s in shard["stories"]]
    assert len(set(seeds)) == len(seeds), "every request has its own seed"
    texts = [s["text"] for s in shard["stories"]]
    assert len(set(texts)) == len(texts) and "duplicate" not in shard["rejections"], "the server samples"
    gen = shard["generation"]
    assert gen["backend"]["backend"] == "openai" and gen["backend"]["model"] == serve.model_dir
    assert gen["seeds"] == {"per": "request", "sent": True, "accepted": True, "honoured": False,
                            "honoured_source": gen["seeds"]["honoured_source"], "system_fingerprints": []}
    usage = gen["usage"]
    assert usage["requests"] == shard["replies"] and usage["usage_missing"] == 0 and usage["retries_total"] == 0
    assert usage["completion_tokens"] == shard["throughput"]["new_tokens"] > 0 and usage["prompt_tokens"] > 0
    expected = (usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 2.0) / 1e6
    assert usage["cost"] == pytest.approx(expected, abs=1e-6)
    assert gen["items_per_second"] > 0 and gen["completion_tokens_per_second"] > 0

    # The neutral corpus through the same round driver (the "Human:" prefill cannot be sent to a
    # chat API: replies are parsed as if it had been).
    settings = {"per_topic": 1, "max_new_tokens": 48, "min_turns": 2, "system_prompt_share": 0.0, "temperature": 0.9,
                "top_p": 0.95, "batch_size": 2, "max_rounds": 1, "allow_shortfall": True, "seed": 3}
    prompts = load_prompts(REPO_ROOT / "config" / "prompts" / "miniature", "neutral")
    backend.close()
    backend = _backend(serve.url, serve)
    corpus = generate_neutral(backend, TOPICS, settings, prompts, ["calm", "happy"], output=tmp_path / "n.json",
                              log=lambda m: None)
    assert corpus["generation"]["usage"]["requests"] == 1 and corpus["n_dialogues"] + sum(corpus["rejections"].values()) == 1
    for d in corpus["dialogues"]:
        assert d["text"].lstrip().startswith("Human:") and d["turns"][0]["role"] == "human"
    backend.close()


def test_server_killed_mid_shard_fails_clearly_and_a_rerun_resumes(serve, story_prompts, tmp_path):
    serve.ensure()
    out = tmp_path / "afraid.json"
    settings = dict(STORY, per_topic=6, max_rounds=1)  # one round of 3 batches
    backend = _backend(serve.url, serve, max_retries=2, backoff=0.2, max_backoff=0.5, timeout=30)

    def kill_after_first_batch(msg: str) -> None:
        if "batch 1:" in msg:
            serve.kill()

    with pytest.raises(BackendError) as info:
        generate_story_shard(backend, "afraid", TOPICS, settings, story_prompts, output=out, log=kill_after_first_batch)
    message = str(info.value)
    assert "round 1 batch 2 failed" in message and "rerun the job to resume" in message
    assert "after 2 retries: connection, connection" in message and serve.url in message
    assert str(Checkpoint(out, "").path) in message
    ckpt = json.loads(Checkpoint(out, "").path.read_text())
    assert ckpt["round"] == 1 and ckpt["batch_in_round"] == 1 and ckpt["replies"] == 2
    assert len(ckpt["pending"]) == 4, "the failed batch is still pending: it is redone, nothing else"
    saved = [s["text"] for s in ckpt["stories"]["0"]]

    serve.start()  # a new server on another port: the checkpoint belongs to the model, not the address
    backend = _backend(serve.url, serve)
    lines: list[str] = []
    shard = generate_story_shard(backend, "afraid", TOPICS, settings, story_prompts, output=out, log=lines.append)
    assert any("resuming from checkpoint (round 1" in line for line in lines)
    assert shard["replies"] == 6 and shard["generation"]["usage"]["requests"] == 6, "only the lost batch was redone"
    assert [s["text"] for s in shard["stories"]][: len(saved)] == saved, "checkpointed stories are kept as they were"
    assert all(s["batch"] == 0 for s in shard["stories"][: len(saved)])
    backend.close()


def test_429_then_success_through_a_fault_proxy_and_the_key_stays_secret(serve, story_prompts, tmp_path, monkeypatch, caplog):
    serve.ensure()
    monkeypatch.setenv("EV_TEST_GENERATOR_KEY", KEY)
    out = tmp_path / "calm.json"
    settings = dict(STORY, per_topic=2)
    caplog.set_level(logging.DEBUG)
    with FaultProxy(serve.url, fail_first=3, status=429, retry_after="1") as proxy:
        backend = _backend(proxy.url, serve, api_key_env="EV_TEST_GENERATOR_KEY", max_concurrency=1,
                           max_retries=4, backoff=0.05, max_backoff=5)
        lines: list[str] = []
        started = time.monotonic()
        shard = generate_story_shard(backend, "calm", TOPICS, settings, story_prompts, output=out, log=lines.append)
        elapsed = time.monotonic() - started
    posts = [r for r in proxy.seen if r["method"] == "POST"]
    assert [r["failed"] for r in posts[:4]] == [True, True, True, False]
    assert all(r["auth"] == f"Bearer {KEY}" for r in posts), "the key from the environment reaches the server"
    # Retry-After: 1 was honoured: at least 1 s between each refused request and the next try.
    gaps = [b["t"] - a["t"] for a, b in zip(posts[:3], posts[1:4])]
    assert min(gaps) >= 0.95 and elapsed >= 3
    usage = shard["generation"]["usage"]
    assert usage["retries"] == {"429": 3} and usage["retries_total"] == 3
    assert usage["requests"] == shard["replies"] == len(posts) - 3
    assert shard["complete"] and shard["n_stories"] == 2, shard["rejections"]
    assert any("HTTP 429" in r.getMessage() and "retry 1 of 4" in r.getMessage() for r in caplog.records)

    # Key hygiene: nowhere in what the job writes or says.
    Path(str(out)).write_text(json.dumps(shard))
    texts = [out.read_text(), Checkpoint(out, "").path.read_text(), "\n".join(lines),
             "\n".join(r.getMessage() for r in caplog.records), repr(backend), json.dumps(backend.describe()),
             str(vars(backend))]
    for text in texts:
        assert KEY not in text
    assert shard["generation"]["backend"]["api_key_env"] == "EV_TEST_GENERATOR_KEY"

    # A server that fails for good: the error names the status and retries, never the key.
    with FaultProxy(serve.url, fail_first=100, status=503, retry_after=None) as proxy:
        backend = _backend(proxy.url, serve, api_key_env="EV_TEST_GENERATOR_KEY", max_retries=1, backoff=0.05)
        with pytest.raises(BackendError) as info:
            generate_story_shard(backend, "calm", TOPICS, settings, story_prompts, output=tmp_path / "x.json",
                                 log=lambda m: None)
    assert "HTTP 503" in str(info.value) and "after 1 retries: 503" in str(info.value)
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None
