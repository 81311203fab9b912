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

from emotion_vectors.backends import (
    BackendError,
    ChatBackend,
    Completion,
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
        "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "X_KEY",
        "timeout": 120.0, "seed_honoured": False,
    }
    with pytest.raises(ValueError, match="model"):
        make_backend({"backend": "openai", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(ValueError, match="'vllm' is not one of"):
        make_backend({"backend": "vllm"})
    with pytest.raises(ValueError, match="http"):
        OpenAIChatBackend("127.0.0.1:9", "m")


# --- HTTP client ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_key_never_in_repr_or_connection_error(monkeypatch):
    monkeypatch.setenv("EV_TEST_KEY", KEY)
    port = _closed_port()
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "judge-model", api_key_env="EV_TEST_KEY", timeout=5)
    for text in (repr(backend), str(backend), json.dumps(backend.describe()), json.dumps(vars(backend))):
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
        assert got == Completion("echo: Name one colour.", 17, 3, "judge-served", True, "stop")
        sent = _OpenAIShapedHandler.requests_seen[-1]["body"]
        assert sent == {"model": "judge", "messages": MESSAGES, "max_tokens": 5, "temperature": 0.3, "stream": False, "seed": 7}
        unseeded = backend.complete(MESSAGES, max_tokens=5, temperature=0.3, seed=None)
        assert "seed" not in _OpenAIShapedHandler.requests_seen[-1]["body"] and not unseeded.seed_honoured
        broken = OpenAIChatBackend(url, "broken", api_key_env="EV_TEST_KEY")
        with pytest.raises(BackendError) as info:
            broken.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)
        assert info.value.status == 500 and "HTTP 500" in str(info.value)
        assert KEY not in str(info.value) and "[key]" in str(info.value)
        garbled = OpenAIChatBackend(url, "garbled", api_key_env="EV_TEST_KEY")
        with pytest.raises(BackendError, match="malformed reply"):
            garbled.complete(MESSAGES, max_tokens=4, temperature=0.0, seed=0)


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
