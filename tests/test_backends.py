"""Chat backends: seeded and greedy generation in process, the OpenAI-compatible client against
real HTTP servers on a loopback port, and the API key kept out of repr and error messages."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from emotion_vectors.corpus.backends import (
    BackendError,
    ChatBackend,
    Completion,
    GenRequest,
    HFChatBackend,
    OpenAIChatBackend,
    make_backend,
    merge_system,
    render_messages,
    render_plain,
)

from conftest import DEFAULT_SPEC, MODELS_DIR

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Name one colour."},
]
KEY = "sk-test-Zq81-never-print-this-key"


# --- rendering ------------------------------------------------------------------------------


def test_render_plain_and_merge_system():
    assert render_plain(MESSAGES) == "System: You are a terse assistant.\n\nUser: Name one colour.\n\nAssistant:"
    merged = merge_system(MESSAGES)
    assert merged == [{"role": "user", "content": "You are a terse assistant.\n\nName one colour."}]
    with pytest.raises(ValueError, match="role"):
        render_plain([{"role": "robot", "content": "x"}])


def test_render_messages_template_fallbacks(shared_tokenizer):
    tok = copy.deepcopy(shared_tokenizer)
    text = render_messages(tok, MESSAGES)
    assert text.startswith("<|im_start|>system\nYou are a terse assistant.")
    assert text.endswith("<|im_start|>assistant\n")
    # A template that rejects the system role (as some Gemma templates do).
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<turn>{{ m['role'] }}: {{ m['content'] }}</turn>{% endfor %}{% if add_generation_prompt %}<turn>model:{% endif %}"
    )
    assert render_messages(tok, MESSAGES) == "<turn>user: You are a terse assistant.\n\nName one colour.</turn><turn>model:"
    tok.chat_template = None
    assert render_messages(tok, MESSAGES) == render_plain(MESSAGES)


# --- in-process backend ---------------------------------------------------------------------


@pytest.mark.slow
def test_hf_backend_seeded_sampling_and_greedy(default_model):
    model, tok = default_model
    backend = HFChatBackend(model, tok, name="smollm2")
    assert isinstance(backend, ChatBackend)
    rng_before = torch.random.get_rng_state()
    a = backend.complete(MESSAGES, max_tokens=6, temperature=1.0, seed=11)
    b = backend.complete(MESSAGES, max_tokens=6, temperature=1.0, seed=11)
    assert torch.equal(rng_before, torch.random.get_rng_state()), "the caller's RNG state must be untouched"
    assert a == b and a.seed_honoured and a.model == "smollm2"
    others = {backend.complete(MESSAGES, max_tokens=6, temperature=1.0, seed=s).text for s in (12, 13)}
    assert len(others | {a.text}) > 1, "different seeds never changed the sample"
    g1 = backend.complete(MESSAGES, max_tokens=6, temperature=0.0, seed=None)
    g2 = backend.complete(MESSAGES, max_tokens=6, temperature=0.0, seed=99)
    assert g1.text == g2.text and g1.seed_honoured
    assert 1 <= g1.completion_tokens <= 6 and g1.finish_reason in ("stop", "length")
    rendered = render_messages(tok, MESSAGES)
    assert g1.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert not backend.complete(MESSAGES, max_tokens=1, temperature=1.0, seed=None).seed_honoured
    assert "smollm2" in repr(backend)


@pytest.mark.slow
def test_make_backend_hf_loads_the_default_model():
    backend = make_backend({**DEFAULT_SPEC, "backend": "hf"}, MODELS_DIR)
    assert isinstance(backend, HFChatBackend) and backend.name == DEFAULT_SPEC["name"]
    assert backend.describe()["backend"] == "hf"


def test_make_backend_openai_spec_and_errors():
    b = make_backend({"backend": "openai", "base_url": "http://127.0.0.1:9/v1/", "model": "m", "api_key_env": "X_KEY"})
    assert isinstance(b, OpenAIChatBackend) and b.url == "http://127.0.0.1:9/v1/chat/completions"
    assert b.describe() == {
        "backend": "openai", "name": "m", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "X_KEY",
        "timeout": 120.0, "seed_honoured": False, "max_concurrency": 4, "rate_limit": None, "max_retries": 5,
        "backoff": 1.0, "max_backoff": 60.0, "price_per_mtok": None, "send_seed": True, "extra_body": {},
    }
    c = make_backend({"backend": "openai", "name": "gen", "base_url": "https://api.example.org/v1", "model": "m",
                      "max_concurrency": 8, "rate_limit": 2.5, "max_retries": 0, "price_per_mtok": {"prompt": 1, "completion": 3}})
    assert (c.name, c.max_concurrency, c.rate_limit, c.max_retries, c.price_per_mtok) == ("gen", 8, 2.5, 0, {"prompt": 1, "completion": 3})
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIChatBackend("http://127.0.0.1:9/v1", "m", max_concurrency=0)
    with pytest.raises(ValueError, match="price_per_mtok"):
        OpenAIChatBackend("http://127.0.0.1:9/v1", "m", price_per_mtok={"input": 1})
    with pytest.raises(ValueError, match="rate_limit"):
        OpenAIChatBackend("http://127.0.0.1:9/v1", "m", rate_limit=-1)
    with pytest.raises(ValueError, match=r"extra_body may not set \['seed'\]"):
        OpenAIChatBackend("http://127.0.0.1:9/v1", "m", extra_body={"seed": 1, "top_k": 5})
    with pytest.raises(ValueError, match="model"):
        make_backend({"backend": "openai", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(ValueError, match="'vllm' is not one of"):
        make_backend({"backend": "vllm"})
    with pytest.raises(ValueError, match="http"):
        OpenAIChatBackend("127.0.0.1:9", "m")


def test_base_url_never_carries_a_credential_and_keys_stay_off_plain_networks(caplog):
    """A credential in base_url is refused (it would reach provenance, logs and errors), and the
    refusal does not repeat it; a key goes over plain http:// only to this machine."""
    secret = "sk-ev-url-9f3Kq"
    for url in (f"https://user:{secret}@api.example.org/v1", f"https://{secret}@api.example.org/v1",
                f"https://api.example.org/v1?api_key={secret}", f"https://api.example.org/v1#{secret}"):
        with pytest.raises(ValueError, match="user name or password|query string or fragment") as err:
            make_backend({"backend": "openai", "base_url": url, "model": "m"})
        assert secret not in str(err.value) and "***" in str(err.value) and "api.example.org" in str(err.value)
    assert secret not in caplog.text
    for url in ("http://api.example.org/v1", "http://10.1.2.3:8000/v1", "http://localhost.example.org/v1"):
        with pytest.raises(ValueError, match="unencrypted"):
            OpenAIChatBackend(url, "m", api_key_env="EV_TEST_KEY")
        assert OpenAIChatBackend(url, "m").base_url == url.rstrip("/")  # no key: nothing to leak
    for url in ("https://api.example.org/v1", "http://127.0.0.1:8000/v1", "http://127.8.9.10/v1",
                "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        assert OpenAIChatBackend(url, "m", api_key_env="EV_TEST_KEY").base_url == url
    with pytest.raises(ValueError, match="name a host"):
        OpenAIChatBackend("http:///v1", "m")


def test_a_credential_in_any_servers_base_url_stops_the_config_before_any_job(caplog):
    """Every ``backend: openai`` spec of a config (generator, behaviour judges, ...) has its
    base_url checked when the config is read, naming the key and never the secret; the run's
    announcement of its models never prints one either."""
    from emotion_vectors.core.config import ConfigError, REPO_ROOT, describe_model, validate_config

    secret = "sk-ev-cfg-7Hq2"
    local = {"name": "smollm2-135m-instruct", "gguf": DEFAULT_SPEC["gguf"]}
    good = {"backend": "openai", "name": "served", "base_url": "https://api.example.org/v1", "model": "m",
            "api_key_env": "EV_GEN_KEY"}
    leaky = {**good, "base_url": f"https://user:{secret}@api.example.org/v1"}
    plain = {**good, "base_url": "http://api.example.org/v1"}
    cases = [({"models": {"generator": leaky, "subject": local, "judge": local}}, "models.generator.base_url"),
             ({"models": {"generator": plain, "subject": local, "judge": local}}, "models.generator.base_url"),
             ({"models": {"generator": local, "subject": local}, "behaviour": {"judges": [local, leaky]}},
              r"behaviour.judges\[1\].base_url")]
    for overrides, where in cases:
        with pytest.raises(ConfigError, match=where) as err:
            validate_config({"run": "t", **overrides}, REPO_ROOT)
        assert secret not in str(err.value)
    assert validate_config({"run": "t", "models": {"generator": good, "subject": local, "judge": local},
                            "behaviour": {"judges": [good]}}, REPO_ROOT)["behaviour"]["judges"] == [good]
    assert secret not in describe_model(leaky) and "***@api.example.org" in describe_model(leaky)
    assert secret not in caplog.text


# --- HTTP client ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_key_never_in_repr_or_connection_error(monkeypatch):
    monkeypatch.setenv("EV_TEST_KEY", KEY)
    port = _closed_port()
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "judge-model", api_key_env="EV_TEST_KEY", timeout=5,
                                max_retries=0)
    for text in (repr(backend), str(backend), json.dumps(backend.describe()), str(vars(backend))):
        assert KEY not in text
    assert "EV_TEST_KEY" in repr(backend)
    with pytest.raises(BackendError) as info:
        backend.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)
    err = info.value
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(err)
    assert KEY not in str(err) and KEY not in repr(err)
    assert err.__context__ is None and err.__cause__ is None, "the original exception holds the request headers"


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("EV_TEST_MISSING_KEY", raising=False)
    backend = OpenAIChatBackend("http://127.0.0.1:9/v1", "m", api_key_env="EV_TEST_MISSING_KEY")
    with pytest.raises(BackendError, match="EV_TEST_MISSING_KEY"):
        backend.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)


class _OpenAIShapedHandler(BaseHTTPRequestHandler):
    """A minimal server speaking the chat-completions wire format: checks the bearer key,
    records each request body, answers with a fixed reply; model "broken" gets a 500 whose body
    echoes the Authorization header (a careless server), model "garbled" gets non-JSON."""

    requests_seen: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        self.requests_seen.append({"path": self.path, "body": body, "auth": auth})
        if self.path != "/v1/chat/completions":
            return self._send(404, json.dumps({"error": "not found"}))
        if auth != f"Bearer {KEY}":
            return self._send(401, json.dumps({"error": "bad key"}))
        if body["model"] == "broken":
            return self._send(500, f"internal error while serving request with header {auth}", "text/plain")
        if body["model"] == "garbled":
            return self._send(200, "<html>not json</html>", "text/html")
        reply = {
            "id": "x", "object": "chat.completion", "model": body["model"] + "-served",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"echo: {body['messages'][-1]['content']}"}}],
            "usage": {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20},
        }
        return self._send(200, json.dumps(reply))


@contextlib.contextmanager
def _local_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIShapedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_openai_backend_wire_format_on_a_loopback_http_server(monkeypatch):
    """The client's side of the protocol against a real HTTP server (stdlib, in a thread)."""
    _OpenAIShapedHandler.requests_seen = []
    monkeypatch.setenv("EV_TEST_KEY", "wrong")
    with _local_server() as url:
        backend = OpenAIChatBackend(url, "judge", api_key_env="EV_TEST_KEY", timeout=10, seed_honoured=True)
        with pytest.raises(BackendError) as info:
            backend.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        assert info.value.status == 401 and "HTTP 401" in str(info.value) and url in str(info.value)
        monkeypatch.setenv("EV_TEST_KEY", KEY)  # read at call time, not at construction
        got = backend.complete(MESSAGES, max_tokens=5, temperature=0.3, seed=7)
        assert got == Completion("echo: Name one colour.", 17, 3, "judge-served", True, "stop", seed=7)
        sent = _OpenAIShapedHandler.requests_seen[-1]["body"]
        assert sent == {"model": "judge", "messages": MESSAGES, "max_tokens": 5, "temperature": 0.3, "stream": False, "seed": 7}
        unseeded = backend.complete(MESSAGES, max_tokens=5, temperature=0.3, seed=None)
        assert "seed" not in _OpenAIShapedHandler.requests_seen[-1]["body"] and not unseeded.seed_honoured
        broken = OpenAIChatBackend(url, "broken", api_key_env="EV_TEST_KEY", max_retries=0)
        with pytest.raises(BackendError) as info:
            broken.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        assert info.value.status == 500 and "HTTP 500" in str(info.value)
        assert KEY not in str(info.value) and "[key]" in str(info.value)
        garbled = OpenAIChatBackend(url, "garbled", api_key_env="EV_TEST_KEY")
        with pytest.raises(BackendError, match="malformed reply"):
            garbled.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)


class _ScriptedHandler(BaseHTTPRequestHandler):
    """A loopback server for the client's retry, seed, concurrency and rate-limit logic (the
    real-server versions are in test_generation_server.py). Model names pick a behaviour:
    ``flaky``: HTTP 429 with ``Retry-After: 0.2`` to the first ``fail_first`` requests, then 503
    without a header to the next ``fail_503``; ``noseed``: HTTP 422 naming the field when a seed
    is sent; anything else: answers after ``delay`` seconds with the seed it got."""

    fail_first = 0
    fail_503 = 0
    delay = 0.0
    seen: list = []
    lock = threading.Lock()
    in_flight = 0
    max_in_flight = 0

    def log_message(self, *args):
        pass

    def _send(self, status, payload, headers=()):
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.seen.append({"t": time.monotonic(), "body": body})
            n = len(cls.seen)
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            if body["model"] == "flaky" and n <= cls.fail_first:
                return self._send(429, {"error": "slow down"}, [("Retry-After", "0.2")])
            if body["model"] == "flaky" and n <= cls.fail_first + cls.fail_503:
                return self._send(503, {"error": "overloaded"})
            if body["model"] == "noseed" and "seed" in body:
                return self._send(422, {"detail": "Unexpected fields in the request: {'seed'}"})
            time.sleep(cls.delay)
            text = f"seed={body.get('seed')} said {body['messages'][-1]['content']}"
            self._send(200, {"model": body["model"], "choices": [{"finish_reason": "stop", "message": {"content": text}}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 4}, "system_fingerprint": "fp-1"})
        finally:
            with cls.lock:
                cls.in_flight -= 1


@contextlib.contextmanager
def _scripted_server(**settings):
    handler = type("Handler", (_ScriptedHandler,), {"seen": [], "lock": threading.Lock(), "in_flight": 0,
                                                    "max_in_flight": 0, **settings})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def _requests(n):
    return [GenRequest([{"role": "user", "content": f"q{k}"}]) for k in range(n)]


def test_retries_with_backoff_honour_retry_after_and_are_counted(caplog):
    with _scripted_server(fail_first=2, fail_503=1) as (url, handler):
        backend = OpenAIChatBackend(url, "flaky", max_retries=3, backoff=0.01, max_backoff=1, max_concurrency=1)
        got = backend.complete(MESSAGES, max_tokens=4, temperature=0.5, seed=3)
    assert got.retries == ("429", "429", "503") and got.text == "seed=3 said Name one colour."
    times = [r["t"] for r in handler.seen]
    assert times[1] - times[0] >= 0.19 and times[2] - times[1] >= 0.19, "Retry-After: 0.2 was honoured"
    assert times[3] - times[2] < 0.19, "without Retry-After the (tiny) exponential backoff applies"
    with _scripted_server(fail_first=5) as (url, handler):
        backend = OpenAIChatBackend(url, "flaky", max_retries=1, backoff=0.01)
        with pytest.raises(BackendError, match=r"HTTP 429 .*\(after 1 retries: 429\)") as info:
            backend.complete(MESSAGES, max_tokens=4, temperature=0.5, seed=3)
    assert info.value.status == 429 and len(handler.seen) == 2


def test_retry_after_parsing_and_retryable_statuses():
    from email.utils import formatdate

    from emotion_vectors.corpus.backends import parse_retry_after, retryable_status

    assert parse_retry_after("3") == 3.0 and parse_retry_after(" 0.5 ") == 0.5 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None and parse_retry_after("-4") == 0.0
    now = time.time()
    assert 9 <= parse_retry_after(formatdate(now + 10, usegmt=True), now=now) <= 11
    assert [retryable_status(s) for s in (408, 429, 500, 502, 503, 504, 400, 401, 404, 422, 501, 505)] == [True] * 6 + [False] * 6


def test_batch_concurrency_row_seeds_rate_limit_and_seed_rejection():
    from emotion_vectors.corpus.backends import row_seed

    with _scripted_server(delay=0.3) as (url, handler):
        backend = OpenAIChatBackend(url, "m", max_concurrency=3, extra_body={"top_k": 50})
        got = backend.generate_batch(_requests(6), max_tokens=4, temperature=0.9, top_p=0.9, seed=11)
        assert handler.max_in_flight == 3, "at most max_concurrency requests in flight, and that many"
        assert [g.text for g in got] == [f"seed={row_seed(11, k)} said q{k}" for k in range(6)], "in request order"
        assert [g.seed for g in got] == [row_seed(11, k) for k in range(6)] and len({g.seed for g in got}) == 6
        assert all(r["body"]["top_p"] == 0.9 and r["body"]["top_k"] == 50 for r in handler.seen)
        assert backend.seed_policy()["accepted"] is True and backend.seed_policy()["system_fingerprints"] == ["fp-1"]
        backend.close()
    with _scripted_server() as (url, handler):
        backend = OpenAIChatBackend(url, "m", max_concurrency=4, rate_limit=10)
        backend.generate_batch(_requests(5), max_tokens=4, temperature=0.9, seed=1)
        starts = sorted(r["t"] for r in handler.seen)
        assert starts[-1] - starts[0] >= 0.35, "5 requests at 10/s span at least 0.4 s"
        backend.close()
    with _scripted_server() as (url, handler):
        backend = OpenAIChatBackend(url, "noseed", max_concurrency=1, seed_honoured=True)
        got = backend.generate_batch(_requests(2), max_tokens=4, temperature=0.9, seed=5)
        assert [g.seed for g in got] == [None, None] and not any(g.seed_honoured for g in got)
        assert ["seed" in r["body"] for r in handler.seen] == [True, False, False], "rejected once, then never sent"
        policy = backend.seed_policy()
        assert policy["sent"] is False and policy["accepted"] is False and policy["honoured"] is False


def test_prefill_is_removed_from_a_reply_that_repeats_it():
    with _scripted_server() as (url, _):
        backend = OpenAIChatBackend(url, "m", max_concurrency=1)
        got = backend.generate_batch([GenRequest([{"role": "user", "content": "x"}], prefill="seed=")],
                                     max_tokens=4, temperature=0.0, seed=2)
    assert got[0].text == f"{got[0].seed} said x"


def test_hf_generate_batch_matches_a_plain_seeded_generate(tiny_llama):
    """The in-process batch is exactly ``model.generate`` on the left-padded rendered prompts
    after ``torch.manual_seed(seed)`` (the corpus generation before the backend layer): the
    shipped default's stories do not change."""
    from conftest import tokenizer_copy

    model, tok = tiny_llama
    tok = tokenizer_copy(tok, "left")
    backend = HFChatBackend(model, tok, name="tiny")
    reqs = [GenRequest(list(MESSAGES)), GenRequest([{"role": "user", "content": "Write a long story please."}], prefill="Once")]
    rng_before = torch.random.get_rng_state()
    got = backend.generate_batch(reqs, max_tokens=7, temperature=0.9, top_p=0.95, seed=1234)
    assert torch.equal(rng_before, torch.random.get_rng_state())
    prompts = [render_messages(tok, r.messages) + r.prefill for r in reqs]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(1234)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=7, do_sample=True, temperature=0.9, top_p=0.95, pad_token_id=tok.pad_token_id)
    for g, row, mask in zip(got, out[:, enc["input_ids"].shape[1]:].tolist(), enc["attention_mask"]):
        n = next((i for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
        assert g.text == tok.decode(row[:n], skip_special_tokens=True) and g.completion_tokens == n
        assert g.prompt_tokens == int(mask.sum()) and g.seed == 1234 and g.truncated == (n >= 7)
    assert backend.seed_policy()["per"] == "batch" and backend.identity() == {"backend": "hf", "name": "tiny"}


def _serve_available() -> tuple[bool, str]:
    try:
        from transformers.utils.import_utils import is_serve_available
    except ImportError as err:  # pragma: no cover
        return False, f"transformers has no serving support ({err})"
    if is_serve_available():
        return True, ""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "openai", "pydantic") if importlib.util.find_spec(m) is None]
    return False, (
        "`transformers serve` needs the transformers[serving] extra; not installed in this "
        f"environment: {', '.join(missing)}"
    )


@pytest.mark.slow
def test_openai_backend_against_transformers_serve(monkeypatch):
    """End to end: ``transformers serve`` with the default model on a loopback port."""
    ok, reason = _serve_available()
    if not ok:
        pytest.skip(reason)
    from conftest import _ensure_default_model

    model_dir = str(_ensure_default_model())
    port = _closed_port()
    cli = Path(sys.executable).with_name("transformers")
    cmd = [str(cli), "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--default-seed", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        import requests

        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        else:
            pytest.fail("transformers serve did not become healthy in 120 s")
        backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", model_dir, api_key_env=None, timeout=120)
        a = backend.complete(MESSAGES, max_tokens=6, temperature=0.0, seed=0)
        b = backend.complete(MESSAGES, max_tokens=6, temperature=0.0, seed=0)
        assert a.text and a.text == b.text
        assert a.completion_tokens is None or a.completion_tokens <= 6
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the generator's backend in the config ----------------------------------------------------


def test_config_generator_backend_is_validated_before_any_work():
    from emotion_vectors.core.config import ConfigError, REPO_ROOT, describe_model, validate_config

    local = {"name": "smollm2-135m-instruct", "gguf": DEFAULT_SPEC["gguf"]}
    server = {"backend": "openai", "name": "served", "base_url": "http://127.0.0.1:8000/v1", "model": "m",
              "api_key_env": "EV_GEN_KEY", "max_concurrency": 8, "price_per_mtok": {"prompt": 0.1, "completion": 0.4}}

    def check(generator, **models):
        return validate_config({"run": "t", "models": {"generator": generator, "subject": local, **models}}, REPO_ROOT)

    cfg = check(server, judge=local)
    assert cfg["models"]["generator"] == server, "nothing is filled into a server spec"
    assert check(local)["models"]["generator"]["dtype"] == "float32", "a local spec gets its defaults"
    assert check({**local, "backend": "hf"})["models"]["generator"]["backend"] == "hf"
    assert describe_model(server) == "served (OpenAI-compatible server http://127.0.0.1:8000/v1, model m, key from $EV_GEN_KEY)"
    with pytest.raises(ConfigError, match="models.judge: absent.*log-probability"):
        check(server)
    with pytest.raises(ConfigError, match="models.selector"):
        validate_config({"run": "t", "models": {"generator": server, "subject": local, "judge": local},
                         "stories": {"selection": {"enabled": True}}}, REPO_ROOT)
    for bad in ({"base_url": "127.0.0.1:8000/v1"}, {"max_concurrency": 0}, {"rate_limit": 0}, {"api_key_env": "sk-abc"},
                {"price_per_mtok": {"input": 1}}, {"temperature": 1}):
        with pytest.raises(ConfigError, match="models.generator"):
            check({**server, **bad}, judge=local)
    with pytest.raises(ConfigError, match="models.subject"):
        validate_config({"run": "t", "models": {"generator": local, "subject": server}}, REPO_ROOT)
