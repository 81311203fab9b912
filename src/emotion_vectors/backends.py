"""Chat backends: one small interface for every model that answers chat messages.

A backend turns a list of chat messages (``{"role": "system" | "user" | "assistant",
"content": str}``) into one :class:`Completion`::

    backend.complete(messages, max_tokens=256, temperature=0.0, seed=0) -> Completion

Two implementations:

- :class:`HFChatBackend`: a transformers model in this process. The messages go through the
  tokenizer's chat template (:func:`render_messages`); temperature 0 is greedy decoding,
  temperature > 0 samples with the seed (``torch.manual_seed`` inside a forked RNG state, so the
  caller's global RNG is untouched). The same seed, prompt and model give the same text.
  :meth:`HFChatBackend.generate_text` takes an already rendered prompt string: that is what the
  behaviour runner calls, so that steering hooks on the same model see exactly that prompt.
- :class:`OpenAIChatBackend`: any server with the OpenAI ``/chat/completions`` API (vLLM,
  llama.cpp's server, ``transformers serve``, hosted APIs), over HTTP with ``requests``. The API
  key is read from the named environment variable at each call and never stored: it is not an
  attribute, not in ``repr``, not in :meth:`OpenAIChatBackend.describe`, and not in error
  messages (which name the HTTP status and the URL).

:func:`make_backend` builds either from a config mapping::

    {backend: hf, name: smollm2-135m-instruct, gguf: {...}}       # or path: <hub id or dir>
    {backend: openai, base_url: http://127.0.0.1:8000/v1, model: my-model,
     api_key_env: OPENAI_API_KEY, timeout: 120, seed_honoured: false}

``Completion.seed_honoured`` says whether the text is a reproducible function of the request
(seed included): true for :class:`HFChatBackend` with a seed or at temperature 0; for an HTTP
server only when the config says the server honours seeds (``seed_honoured: true``), since the
client cannot tell.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: Roles of the plain-text fallback (a tokenizer without a chat template, e.g. a base model).
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class BackendError(RuntimeError):
    """A backend call that failed (HTTP status, refused connection, malformed reply).

    ``status`` is the HTTP status when there was one. The message never contains an API key.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Completion:
    """One reply of a backend.

    Attributes:
        text: the reply (special tokens removed; nothing else stripped).
        prompt_tokens, completion_tokens: token counts (``None`` when a server does not say).
        model: the model that answered (the server's name for it, or the backend's label).
        seed_honoured: whether the reply is a reproducible function of the request and seed.
        finish_reason: ``"stop"`` (end of turn) or ``"length"`` (hit ``max_tokens``), if known.
    """

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    seed_honoured: bool
    finish_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if value is None:
            continue
        ids |= set(value if isinstance(value, (list, tuple)) else [value])
    return ids


class HFChatBackend:
    """A transformers causal LM in this process (see the module docstring).

    Args:
        model, tokenizer: as loaded by :func:`emotion_vectors.models.load_model`.
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

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return render_messages(self.tokenizer, messages)

    def complete(
        self, messages: list[dict], *, max_tokens: int, temperature: float, seed: int | None
    ) -> Completion:
        return self.generate_text(self.render(messages), max_tokens=max_tokens, temperature=temperature, seed=seed)

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
        import torch

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
        cuda = [device] if getattr(device, "type", "cpu") == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if seed is not None:
                torch.manual_seed(int(seed))
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
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


class OpenAIChatBackend:
    """A server with the OpenAI chat-completions API (see the module docstring).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``; requests go to ``{base_url}/chat/completions``.
        model: the server's model name, sent with each request.
        api_key_env: name of the environment variable holding the key (read at each call; its
            absence is an error naming the variable), or ``None`` for servers without keys.
        timeout: seconds for the whole request.
        seed_honoured: whether this server is known to give the same reply for the same seed
            (recorded in each :class:`Completion`; the client cannot check it).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        seed_honoured: bool = False,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.seed_honoured = bool(seed_honoured)

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
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "timeout": self.timeout,
            "seed_honoured": self.seed_honoured,
        }

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendError(
                f"environment variable {self.api_key_env} (the API key for {self.url}) is not set"
            )
        return key

    def complete(
        self, messages: list[dict], *, max_tokens: int, temperature: float, seed: int | None
    ) -> Completion:
        import requests

        _check_messages(messages)
        key = self._key()
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": int(max_tokens),
            "temperature": float(temperature),
            "stream": False,
        }
        if seed is not None:
            payload["seed"] = int(seed)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Errors are raised outside the ``except`` blocks, so that the new exception carries no
        # reference (``__context__``) to the original one, whose request holds the headers (key).
        failure: str | None = None
        try:
            resp = requests.post(self.url, json=payload, headers=headers, timeout=self.timeout)
        except requests.RequestException as err:
            failure = f"POST {self.url} failed: {type(err).__name__}: {_scrub(str(err), key)}"
        if failure is not None:
            raise BackendError(failure)
        if resp.status_code >= 400:
            body = _scrub(resp.text[:500], key)
            raise BackendError(f"HTTP {resp.status_code} from POST {self.url}: {body}", status=resp.status_code)
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as err:
            failure = (
                f"malformed reply from POST {self.url} ({type(err).__name__}: {err}): "
                f"{_scrub(resp.text[:300], key)}"
            )
        if failure is not None:
            raise BackendError(failure, status=resp.status_code)
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            model=str(data.get("model") or self.model),
            seed_honoured=self.seed_honoured and seed is not None,
            finish_reason=choice.get("finish_reason"),
        )


def _scrub(text: str, key: str | None) -> str:
    return text.replace(key, "[key]") if key else text


BACKENDS = ("hf", "openai")


def make_backend(spec: Mapping[str, Any], models_dir: str | Path = "results/models") -> ChatBackend:
    """A backend from a config mapping (see the module docstring).

    ``backend: hf`` (the default) loads the model with :func:`emotion_vectors.models.load_model`
    (so ``name``, ``gguf`` or ``path``, ``dtype``, ``device``, ... mean what they mean there);
    ``backend: openai`` needs ``base_url`` and ``model``.
    """
    kind = spec.get("backend", "hf")
    if kind == "hf":
        from .models import load_model

        loaded = load_model(dict(spec), models_dir)
        return HFChatBackend(loaded.model, loaded.tokenizer, name=spec.get("name"), top_p=float(spec.get("top_p", 1.0)))
    if kind == "openai":
        missing = [k for k in ("base_url", "model") if not spec.get(k)]
        if missing:
            raise ValueError(f"backend 'openai' needs {', '.join(missing)} (spec keys: {sorted(spec)})")
        return OpenAIChatBackend(
            base_url=str(spec["base_url"]),
            model=str(spec["model"]),
            api_key_env=spec.get("api_key_env"),
            timeout=float(spec.get("timeout", 120.0)),
            seed_honoured=bool(spec.get("seed_honoured", False)),
        )
    raise ValueError(f"backend {kind!r} is not one of {BACKENDS}")
