"""Chat and generation backends: one small interface for every model that answers chat messages.

A backend turns a list of chat messages (``{"role": "system" | "user" | "assistant",
"content": str}``) into one :class:`Completion`::

    backend.complete(messages, max_tokens=256, temperature=0.0, seed=0) -> Completion

and a batch of requests (:class:`GenRequest`: messages, and optionally text the reply starts
with) into one completion each, sampled from one batch seed::

    backend.generate_batch(requests, max_tokens=64, temperature=0.9, top_p=0.95, seed=s)

That is what the corpus generation (``emotion_vectors.corpus.generate.run_rounds``) calls, whichever
backend the config chose. Two implementations:

- :class:`HFChatBackend`: a transformers model in this process. The messages go through the
  tokenizer's chat template (:func:`render_messages`); temperature 0 is greedy decoding,
  temperature > 0 samples with the seed (``torch.manual_seed`` inside a forked RNG state, so the
  caller's global RNG is untouched). The same seed, prompt and model give the same text.
  :meth:`HFChatBackend.generate_text` takes an already rendered prompt string: that is what the
  behaviour runner calls, so that steering hooks on the same model see exactly that prompt.
  :meth:`HFChatBackend.generate_batch` samples a padded batch (left padding) from one seed.
- :class:`OpenAIChatBackend`: any server with the OpenAI ``/chat/completions`` API (vLLM,
  SGLang, llama.cpp's server, ``transformers serve``, hosted APIs), over HTTP with ``requests``:

  * a batch is sent as concurrent requests, at most ``max_concurrency`` at a time (a thread
    pool), each with its own seed (:func:`row_seed` of the batch seed and its row);
  * ``rate_limit`` requests per second at most (client side, shared by all threads);
  * retries with exponential backoff and jitter (``backoff`` * 2^k s, times 0.5-1, at most
    ``max_backoff``) on HTTP 408, 429 and 5xx (not 501/505), timeouts and refused or dropped
    connections, up to ``max_retries`` times; a ``Retry-After`` header is honoured (waited at
    least, up to ``max_backoff``). Other errors (401, 404, ...) fail at once. Each
    :class:`Completion` lists the retries it needed (``retries``: ``"429"``, ``"503"``,
    ``"timeout"``, ``"connection"``), so that a shard can count them;
  * the ``seed`` field is sent with each request (``send_seed``); a server that rejects it
    (HTTP 400/422 naming ``seed``) gets the request again without it, and the backend records
    ``seed_accepted: false`` from then on;
  * token usage (the reply's ``usage``) and the cost from ``price_per_mtok`` ({prompt,
    completion} in currency units per million tokens; :func:`cost`);
  * the API key is read from the named environment variable at each call and never stored: it
    is not an attribute, not in ``repr``, not in :meth:`OpenAIChatBackend.describe`, not in log
    lines and not in error messages (which name the HTTP status and the URL; a server's error
    body is scrubbed of the key);
  * ``base_url`` may not carry a credential (``user:password@``, a query string or a fragment:
    :func:`check_base_url`), since it is recorded in provenance and named in logs and errors
    (the refusal names the URL with those parts replaced by ``***``); and a key is sent only
    over ``https://`` or to a loopback address (``http://127.0.0.1``, ``localhost``, ``[::1]``),
    never in clear text across a network.

:func:`make_backend` builds either from a config mapping::

    {backend: hf, name: smollm2-135m-instruct, gguf: {...}}       # or path: <hub id or dir>
    {backend: openai, base_url: http://127.0.0.1:8000/v1, model: my-model,
     api_key_env: OPENAI_API_KEY, timeout: 120, seed_honoured: false, max_concurrency: 4,
     rate_limit: null, max_retries: 5, backoff: 1.0, max_backoff: 60,
     price_per_mtok: {prompt: 0.15, completion: 0.6}, extra_body: {}}

``Completion.seed_honoured`` says whether the text is a reproducible function of the request
(seed included): true for :class:`HFChatBackend` with a seed or at temperature 0; for an HTTP
server only when the config says the server honours seeds (``seed_honoured: true``) and the
server accepted the seed, since the client cannot tell.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from emotion_vectors.core.urls import check_base_url, redact_url

LOG = logging.getLogger("emotion_vectors.corpus.backends")

#: Roles of the plain-text fallback (a tokenizer without a chat template, e.g. a base model).
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class BackendError(RuntimeError):
    """A backend call that failed (HTTP status, refused connection, malformed reply).

    ``status`` is the HTTP status when there was one. The message never contains an API key.
    """

    def __init__(self, message: str, status: int | None = None, abandoned: bool = False):
        super().__init__(message)
        self.status = status
        self.abandoned = abandoned  # given up because another request of its batch failed


@dataclass(frozen=True)
class Completion:
    """One reply of a backend.

    Attributes:
        text: the reply (special tokens removed; nothing else stripped).
        prompt_tokens, completion_tokens: token counts (``None`` when a server does not say).
        model: the model that answered (the server's name for it, or the backend's label).
        seed_honoured: whether the reply is a reproducible function of the request and seed.
        finish_reason: ``"stop"`` (end of turn) or ``"length"`` (hit ``max_tokens``), if known.
        seed: the seed this reply was sampled with (``None``: none was used or sent).
        retries: why each retry of the request was needed (``"429"``, ``"503"``, ``"timeout"``,
            ``"connection"``), in order; empty when the first attempt answered.
    """

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    seed_honoured: bool
    finish_reason: str | None = None
    seed: int | None = None
    retries: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        """Whether the reply stopped at the token limit."""
        return self.finish_reason == "length"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenRequest:
    """One generation request of a batch: chat messages, and text the reply starts with.

    ``prefill`` is appended after the rendered prompt by an in-process backend (the reply
    continues it); a chat API cannot take it, so :class:`OpenAIChatBackend` sends the messages
    only and removes the prefill from the start of a reply that repeats it. Either way the
    returned text is what follows the prefill.
    """

    messages: list[dict] = field(default_factory=list)
    prefill: str = ""


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row`` of a batch sampled from ``seed`` by a backend that sends one
    request per row (31 bits, stable across runs and machines)."""
    digest = hashlib.sha256(f"{int(seed)}|row|{int(row)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def cost(prompt_tokens: int, completion_tokens: int, price_per_mtok: Mapping[str, float] | None) -> float | None:
    """What the tokens cost at ``price_per_mtok`` (``{prompt, completion}`` per million
    tokens; ``None``: no prices given)."""
    if not price_per_mtok:
        return None
    return (prompt_tokens * float(price_per_mtok.get("prompt", 0.0))
            + completion_tokens * float(price_per_mtok.get("completion", 0.0))) / 1e6


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chat messages (see the module docstring)."""

    name: str

    def complete(
        self, messages: list[dict], *, max_tokens: int, temperature: float, seed: int | None
    ) -> Completion:
        ...


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if m.get("role") not in PLAIN_ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must have a role in {sorted(PLAIN_ROLES)} and string content: {m!r}")


def render_plain(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """The fallback format for tokenizers without a chat template::

        System: <system text>

        User: <user text>

        Assistant:

    (each message as ``Role: content`` separated by a blank line; with ``add_generation_prompt``
    a final ``Assistant:`` that the model continues)."""
    _check_messages(messages)
    parts = [f"{PLAIN_ROLES[m['role']]}: {m['content'].strip()}" for m in messages]
    if add_generation_prompt:
        parts.append(f"{PLAIN_ROLES['assistant']}:")
    return "\n\n".join(parts)


def merge_system(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The messages with every system message folded into the start of the first user turn
    (for chat templates that reject a system role)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_messages(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Chat messages as the prompt text the model reads.

    Through ``tokenizer.apply_chat_template`` when the tokenizer has a template; if the template
    raises on the messages and they hold a system message (templates without a system role,
    e.g. some Gemma versions), the system text is merged into the first user turn and the
    template tried again. Without a template: :func:`render_plain`.
    """
    _check_messages(messages)
    if not has_chat_template(tokenizer):
        return render_plain(messages, add_generation_prompt)
    msgs = [dict(m) for m in messages]
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:  # noqa: BLE001 - jinja raises TemplateError (or others) for an unsupported role
        if not any(m["role"] == "system" for m in msgs):
            raise
        return tokenizer.apply_chat_template(
            merge_system(msgs), tokenize=False, add_generation_prompt=add_generation_prompt
        )


def _seeded_generate(model: Any, enc: Any, kwargs: dict[str, Any], seed: int | None, device: Any) -> Any:
    """``model.generate(**enc, **kwargs)`` seeded by ``seed``, leaving the global RNG (and the
    device's, on CUDA) as it found them."""
    import torch

    cuda = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.manual_seed(int(seed))
        with torch.inference_mode():
            return model.generate(**enc, **kwargs)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if value is None:
            continue
        ids |= set(value if isinstance(value, (list, tuple)) else [value])
    return ids


class _RenderedPrompts:
    """Continuations of an already rendered prompt, for :class:`HFChatBackend` (what the
    behaviour runner calls, so that steering hooks on the same model see exactly that prompt)."""

    model: Any
    tokenizer: Any
    name: str
    top_p: float

    def generate_text(self, prompt: str, *, max_tokens: int, temperature: float, seed: int | None) -> Completion:
        """Continue an already rendered prompt: :meth:`generate_texts` with ``n = 1``."""
        return self.generate_texts(prompt, 1, max_tokens=max_tokens, temperature=temperature, seed=seed)[0]

    def generate_texts(self, prompt: str, n: int, *, max_tokens: int, temperature: float,
                       seed: int | None) -> list[Completion]:
        """``n`` continuations of one already rendered prompt (chat template applied, or plain
        text), sampled in one batch from one seed (the prompt repeated ``n`` times: no padding).

        A prompt rendered through a chat template carries its own special tokens, so the
        tokenizer adds none; a plain prompt (no template) gets the tokenizer's usual ones. The
        same prompt, ``n``, seed and settings give the same texts.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, not {max_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {temperature}")
        add_special = not has_chat_template(self.tokenizer)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special)
        device = self.model.device
        if n < 1:
            raise ValueError(f"n must be >= 1, not {n}")
        enc = {k: v.to(device).expand(n, -1) for k, v in enc.items()}
        n_prompt = int(enc["input_ids"].shape[1])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": pad}
        if temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=self.top_p, top_k=None)
        out = _seeded_generate(self.model, enc, kwargs, seed, device)
        eos = _eos_ids(self.model, self.tokenizer)
        done = []
        for row in out[:, n_prompt:].tolist():
            k = next((i for i, t in enumerate(row) if t in eos), len(row))
            done.append(Completion(
                text=self.tokenizer.decode(row[:k], skip_special_tokens=True),
                prompt_tokens=n_prompt,
                completion_tokens=k,
                model=self.name,
                seed_honoured=temperature == 0 or seed is not None,
                finish_reason="stop" if k < len(row) else "length",
            ))
        return done


class HFChatBackend(_RenderedPrompts):
    """A transformers causal LM in this process (see the module docstring).

    Args:
        model, tokenizer: as loaded by :func:`emotion_vectors.core.models.load_model`.
        name: label recorded in each :class:`Completion` (default: the model's ``name_or_path``).
        top_p: nucleus sampling bound when sampling (1.0 = the full distribution).
    """

    def __init__(self, model: Any, tokenizer: Any, name: str | None = None, top_p: float = 1.0):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or str(getattr(model, "name_or_path", None) or type(model).__name__)
        self.top_p = top_p

    def __repr__(self) -> str:
        return f"HFChatBackend(name={self.name!r}, top_p={self.top_p})"

    def describe(self) -> dict[str, Any]:
        """What a provenance record needs."""
        return {"backend": "hf", "name": self.name, "top_p": self.top_p}

    def identity(self) -> dict[str, Any]:
        """What makes this backend's replies what they are (part of a checkpoint's fingerprint)."""
        return {"backend": "hf", "name": self.name}

    def seed_policy(self) -> dict[str, Any]:
        """How seeds are used: one per batch, applied by this process (always honoured)."""
        return {"per": "batch", "sent": True, "accepted": True, "honoured": True}

    def generate_batch(self, requests: Sequence[GenRequest], *, max_tokens: int, temperature: float,
                       top_p: float = 1.0, seed: int | None = None) -> list[Completion]:
        """One completion per request, sampled together in one left-padded batch from ``seed``.

        Each request's messages are rendered (:func:`render_messages`) and its prefill appended;
        a rendered chat template carries its own special tokens, so the tokenizer adds none.
        Sampling uses the model's generation config for everything this call does not set
        (e.g. ``top_k``), as ``model.generate`` does. The same requests, seed and model give the
        same texts; each completion's ``seed`` is the batch seed.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, not {max_tokens}")
        if not requests:
            return []
        tok = self.tokenizer
        prompts = [self.render(r.messages) + r.prefill for r in requests]
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not has_chat_template(tok))
        finally:
            tok.padding_side = old_side
        device = self.model.device
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id}
        if temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None)
        else:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        out = _seeded_generate(self.model, enc, kwargs, seed, device)
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()
        eos = _eos_ids(self.model, tok)
        done = []
        for row, n_in in zip(out[:, enc["input_ids"].shape[1]:].cpu().tolist(), n_prompt):
            n = next((i for i, t in enumerate(row) if t in eos), len(row))
            done.append(Completion(
                text=tok.decode(row[:n], skip_special_tokens=True),
                prompt_tokens=int(n_in),
                completion_tokens=n,
                model=self.name,
                seed_honoured=temperature == 0 or seed is not None,
                finish_reason="length" if n >= max_tokens else "stop",
                seed=seed,
            ))
        return done

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return render_messages(self.tokenizer, messages)

    def complete(
        self, messages: list[dict], *, max_tokens: int, temperature: float, seed: int | None
    ) -> Completion:
        return self.generate_text(self.render(messages), max_tokens=max_tokens, temperature=temperature, seed=seed)


#: Request fields the client sets itself (not allowed in ``extra_body``).
_OWN_FIELDS = ("model", "messages", "max_tokens", "temperature", "top_p", "seed", "stream")


#: HTTP statuses worth retrying: request timeout, rate limit, server errors (not "not implemented"
#: or "HTTP version not supported", which will not change).
def retryable_status(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status not in (501, 505))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RateLimiter:
    """At most ``per_second`` starts per second over all threads (``None``: no limit)."""

    def __init__(self, per_second: float | None):
        if per_second is not None and per_second <= 0:
            raise ValueError(f"rate_limit must be > 0 requests per second (or null), not {per_second}")
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until the next slot; returns the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - now
        if delay > 0:
            time.sleep(delay)
        return delay


class _HTTPClient:
    """The HTTP side of :class:`OpenAIChatBackend`: the API key (read from its variable at each
    call), one ``requests`` session per thread, one exchange with retries and backoff, and the
    check of the server before any generation. Uses the backend's settings and rate limiter."""

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendError(
                f"environment variable {self.api_key_env} (the API key for {self.url}) is not set"
            )
        return key

    def _session(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2**retry) * self._jitter.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _send(self, method: str, url: str, payload: dict[str, Any] | None = None,
              stop: threading.Event | None = None) -> tuple[Any, list[str], dict[str, Any] | None]:
        """One HTTP exchange with retries (see the class docstring).

        Returns ``(response, retry reasons, the payload as finally sent)``. Raises
        :class:`BackendError` (never holding the key, with no chained exception: the original
        one's request holds the headers).
        """
        import requests

        key = self._key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        reasons: list[str] = []
        while True:
            self._limiter.wait()
            failure: str | None = None
            reason: str | None = None
            status: int | None = None
            retry_after: float | None = None
            resp = None
            try:
                resp = self._session().request(method, url, json=payload, headers=headers, timeout=self.timeout)
            except requests.Timeout as err:
                failure, reason = f"{method} {url} timed out after {self.timeout:g} s: {type(err).__name__}", "timeout"
            except requests.RequestException as err:
                failure = f"{method} {url} failed: {type(err).__name__}: {_scrub(str(err), key)}"
                reason = "connection"
            if resp is not None:
                if resp.status_code < 400:
                    return resp, reasons, payload
                status = resp.status_code
                body = resp.text[:500]
                if (payload is not None and "seed" in payload and status in (400, 422)
                        and "seed" in body.lower()):
                    self.seed_accepted = False
                    LOG.warning("%s rejected the seed field (HTTP %d); sending requests without seeds "
                                "(recorded: seed_accepted false)", url, status)
                    payload = {k: v for k, v in payload.items() if k != "seed"}
                    continue
                failure = f"HTTP {status} from {method} {url}: {_scrub(body, key)}"
                reason = str(status) if retryable_status(status) else None
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if reason is None or len(reasons) >= self.max_retries or (stop is not None and stop.is_set()):
                if reasons:
                    failure += f" (after {len(reasons)} retries: {', '.join(reasons)})"
                raise BackendError(failure, status=status)
            delay = self._delay(len(reasons), retry_after)
            reasons.append(reason)
            LOG.warning("%s %s: %s; retry %d of %d in %.1f s", method, url,
                        f"HTTP {status}" if status else reason, len(reasons), self.max_retries, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise BackendError(f"{failure} (abandoned: another request of the batch failed)", status=status,
                                       abandoned=True)
            else:
                time.sleep(delay)

    def check(self) -> list[str] | None:
        """Before any generation: the key variable is set and the server answers
        ``GET {base_url}/models`` (with the usual retries). Returns the model ids it lists
        (``None`` when the server has no such endpoint); warns when ``model`` is not among them.

        Raises:
            BackendError: the key is missing, or the server cannot be reached or refuses us.
        """
        url = f"{self.base_url}/models"
        try:
            resp, _, _ = self._send("GET", url)
        except BackendError as err:
            if err.status in (404, 405):
                return None
            raise
        try:
            ids = [str(m.get("id")) for m in resp.json().get("data", [])]
        except (ValueError, AttributeError):
            return None
        if ids and self.model not in ids:
            LOG.warning("%s does not list model %r (it lists %s); requests name it anyway", url, self.model, ids[:10])
        return ids


class _ChatRequests:
    """The requests of :class:`OpenAIChatBackend`: one chat completion, and a batch as one
    request per row, at most ``max_concurrency`` in flight (a thread pool started on first use)."""

    def complete(
        self, messages: list[dict], *, max_tokens: int, temperature: float, seed: int | None,
        top_p: float | None = None, stop: threading.Event | None = None,
    ) -> Completion:
        _check_messages(messages)
        send_seed = seed is not None and self.send_seed and self.seed_accepted is not False
        payload = _chat_payload(self.model, messages, max_tokens, temperature, self.extra_body, top_p,
                                seed if send_seed else None)
        resp, reasons, sent = self._send("POST", self.url, payload, stop)
        seed_sent = sent is not None and "seed" in sent
        if seed_sent and self.seed_accepted is None:
            self.seed_accepted = True
        data, choice, text = _parse_reply(resp, self.url, self._key)
        if data.get("system_fingerprint"):
            self.system_fingerprints.add(str(data["system_fingerprint"]))
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            model=str(data.get("model") or self.model),
            seed_honoured=self.seed_honoured and seed_sent,
            finish_reason=choice.get("finish_reason"),
            seed=int(seed) if seed_sent else None,
            retries=tuple(reasons),
        )

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="openai-backend")
            return self._pool

    def close(self) -> None:
        """Stop the request threads (a later batch starts them again)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def generate_batch(self, requests: Sequence[GenRequest], *, max_tokens: int, temperature: float,
                       top_p: float | None = None, seed: int | None = None) -> list[Completion]:
        """One completion per request: concurrent requests (at most ``max_concurrency``), row
        ``k`` seeded with :func:`row_seed` ``(seed, k)``; a reply that repeats its request's
        prefill has it removed (see :class:`GenRequest`).

        Raises:
            BackendError: a request failed after its retries; the other requests of the batch
                are cancelled or abandoned at their next retry, and nothing of the batch is
                returned.
        """
        if not requests:
            return []
        seeds = [None if seed is None else row_seed(seed, k) for k in range(len(requests))]
        stop = threading.Event()

        def one(k: int) -> Completion:
            req = requests[k]
            got = self.complete(req.messages, max_tokens=max_tokens, temperature=temperature, seed=seeds[k],
                                top_p=top_p, stop=stop)
            prefill = req.prefill.strip()
            if prefill and got.text.lstrip().startswith(prefill):
                got = dataclasses.replace(got, text=got.text.lstrip()[len(prefill):])
            return got

        if self.max_concurrency == 1 or len(requests) == 1:
            return [one(k) for k in range(len(requests))]
        futures = [self._executor().submit(one, k) for k in range(len(requests))]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            stop.set()
            for f in pending:
                f.cancel()
            wait(futures)
            n_ok = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            err = next((e for e in errors if not getattr(e, "abandoned", False)), errors[0])
            if not isinstance(err, BackendError):
                raise err
            raise BackendError(f"{err} [{n_ok} of the batch's {len(futures)} requests had answered]",
                               status=getattr(err, "status", None))
        return [f.result() for f in futures]


class OpenAIChatBackend(_HTTPClient, _ChatRequests):
    """A server with the OpenAI chat-completions API (see the module docstring).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``; requests go to ``{base_url}/chat/completions``.
        model: the server's model name, sent with each request.
        api_key_env: name of the environment variable holding the key (read at each call; its
            absence is an error naming the variable), or ``None`` for servers without keys.
        timeout: seconds for each HTTP request (a timeout is retried).
        seed_honoured: whether this server is known to give the same reply for the same seed
            (recorded in each :class:`Completion`; the client cannot check it).
        name: label recorded in provenance (default: ``model``).
        max_concurrency: requests of a batch in flight at once (a thread pool).
        rate_limit: requests per second at most (``None``: no limit).
        max_retries: retries of one request after a retryable failure (0: none).
        backoff, max_backoff: the first retry waits ``backoff`` s (times a jitter factor drawn
            from 0.5-1), each next one twice as long, never more than ``max_backoff`` s; a
            ``Retry-After`` header asks for at least its value (up to ``max_backoff``).
        price_per_mtok: ``{prompt, completion}`` prices per million tokens (``None``: unknown).
        send_seed: send each request's ``seed`` (dropped for good if the server rejects it).
        extra_body: more JSON fields sent with every request, for a server's own parameters
            (e.g. ``transformers serve``: ``{"generation_config": "{\"do_sample\": true}"}``,
            without which it decodes greedily for a model whose generation config does not say
            ``do_sample``; vLLM: ``{"top_k": 50}``). The fields this client sets cannot be given.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        seed_honoured: bool = False,
        *,
        name: str | None = None,
        max_concurrency: int = 4,
        rate_limit: float | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        price_per_mtok: Mapping[str, float] | None = None,
        send_seed: bool = True,
        extra_body: Mapping[str, Any] | None = None,
    ):
        extra, prices = _checked_options(base_url, api_key_env, timeout, max_concurrency, max_retries, backoff,
                                         max_backoff, extra_body, price_per_mtok)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.seed_honoured = bool(seed_honoured)
        self.max_concurrency = int(max_concurrency)
        self.rate_limit = float(rate_limit) if rate_limit else None
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.price_per_mtok = prices
        self.send_seed = bool(send_seed)
        self.extra_body = extra
        self.seed_accepted: bool | None = None  # None: no seed sent yet
        self.system_fingerprints: set[str] = set()
        self._limiter = RateLimiter(self.rate_limit)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._jitter = random.Random()


    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        return (
            f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, timeout={self.timeout})"
        )

    def describe(self) -> dict[str, Any]:
        """What a provenance record needs (the variable's name, never its value)."""
        return {
            "backend": "openai",
            "name": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "timeout": self.timeout,
            "seed_honoured": self.seed_honoured,
            "max_concurrency": self.max_concurrency,
            "rate_limit": self.rate_limit,
            "max_retries": self.max_retries,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "price_per_mtok": self.price_per_mtok,
            "send_seed": self.send_seed,
            "extra_body": self.extra_body,
        }

    def identity(self) -> dict[str, Any]:
        """What makes this backend's replies what they are (part of a checkpoint's fingerprint;
        not the URL: the same model behind a restarted server on another port is the same)."""
        return {"backend": "openai", "model": self.model}

    def seed_policy(self) -> dict[str, Any]:
        """How seeds are used: one per request; whether they were sent, accepted and honoured."""
        sent = self.send_seed and self.seed_accepted is not False
        return {
            "per": "request",
            "sent": sent,
            "accepted": self.seed_accepted,
            "honoured": bool(self.seed_honoured and sent and self.seed_accepted),
            "honoured_source": "config (seed_honoured): a client cannot check it",
            "system_fingerprints": sorted(self.system_fingerprints),
        }


def _checked_options(base_url: str, api_key_env: str | None, timeout: float, max_concurrency: int,
                     max_retries: int, backoff: float, max_backoff: float, extra_body: Mapping[str, Any] | None,
                     price_per_mtok: Mapping[str, float] | None) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Refuse bad options of :class:`OpenAIChatBackend` (``ValueError``); returns its
    ``extra_body`` and ``price_per_mtok`` as dicts (``None``: no prices)."""
    check_base_url(base_url, api_key_env)
    if int(max_concurrency) < 1:
        raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
    if int(max_retries) < 0 or float(backoff) < 0 or float(max_backoff) < 0:
        raise ValueError(f"max_retries, backoff and max_backoff must be >= 0 (got {max_retries}, {backoff}, {max_backoff})")
    if float(timeout) <= 0:
        raise ValueError(f"timeout must be > 0 seconds, not {timeout}")
    extra = dict(extra_body or {})
    clash = sorted(set(extra) & set(_OWN_FIELDS))
    if clash:
        raise ValueError(f"extra_body may not set {clash}: the client sets them (from the corpus settings)")
    prices = dict(price_per_mtok) if price_per_mtok else None
    if prices is not None:
        unknown = sorted(set(prices) - {"prompt", "completion"})
        if unknown or any(float(v) < 0 for v in prices.values()):
            raise ValueError(f"price_per_mtok takes non-negative prompt and completion prices, not {prices}")
    return extra, prices


def _chat_payload(model: str, messages: Sequence[Mapping[str, Any]], max_tokens: int, temperature: float,
                  extra_body: Mapping[str, Any], top_p: float | None, seed: int | None) -> dict[str, Any]:
    """The JSON body of one ``/chat/completions`` request (``seed``: ``None`` sends none)."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": int(max_tokens),
        "temperature": float(temperature),
        "stream": False,
    }
    payload.update(extra_body)
    if top_p is not None:
        payload["top_p"] = float(top_p)
    if seed is not None:
        payload["seed"] = int(seed)
    return payload


def _parse_reply(resp: Any, url: str, key: Callable[[], str | None]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(reply, its first choice, the choice's text)`` of a chat-completions response; a
    malformed one raises :class:`BackendError` (its body scrubbed of the key)."""
    failure: str | None = None
    try:
        data = resp.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("message content is not a string")
    except (ValueError, KeyError, IndexError, TypeError) as err:
        failure = (
            f"malformed reply from POST {url} ({type(err).__name__}: {err}): "
            f"{_scrub(resp.text[:300], key())}"
        )
    if failure is not None:
        raise BackendError(failure, status=resp.status_code)
    return data, choice, text


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "[key]") if key else text


BACKENDS = ("hf", "openai")
#: Keys of an ``openai`` spec passed to :class:`OpenAIChatBackend` (besides base_url and model).
OPENAI_OPTIONS = ("api_key_env", "timeout", "seed_honoured", "name", "max_concurrency", "rate_limit",
                  "max_retries", "backoff", "max_backoff", "price_per_mtok", "send_seed", "extra_body")


def make_backend(spec: Mapping[str, Any], models_dir: str | Path = "results/models") -> ChatBackend:
    """A backend from a config mapping (see the module docstring).

    ``backend: hf`` (the default) loads the model with :func:`emotion_vectors.core.models.load_model`
    (so ``name``, ``gguf`` or ``path``, ``dtype``, ``device``, ... mean what they mean there);
    ``backend: openai`` needs ``base_url`` and ``model`` and takes :data:`OPENAI_OPTIONS`.
    """
    kind = spec.get("backend", "hf")
    if kind == "hf":
        from ..core.models import load_model

        loaded = load_model(dict(spec), models_dir)
        return HFChatBackend(loaded.model, loaded.tokenizer, name=spec.get("name"), top_p=float(spec.get("top_p", 1.0)))
    if kind == "openai":
        missing = [k for k in ("base_url", "model") if not spec.get(k)]
        if missing:
            raise ValueError(f"backend 'openai' needs {', '.join(missing)} (spec keys: {sorted(spec)})")
        options = {k: spec[k] for k in OPENAI_OPTIONS if spec.get(k) is not None}
        return OpenAIChatBackend(base_url=str(spec["base_url"]), model=str(spec["model"]), **options)
    raise ValueError(f"backend {kind!r} is not one of {BACKENDS}")
