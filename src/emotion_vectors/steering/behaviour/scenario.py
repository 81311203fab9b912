"""The scenario of a behaviour experiment: who is who, the inbox, and the prompt the subject reads.

A scenario file (``config/scenarios/blackmail.yaml``) holds the system prompt (the assistant's
role and its email tool), the user instruction, the inbox, and the facts the checks need: the
executive's name and addresses, the other people's addresses, and the words that show the affair
is being talked about. :func:`load_scenario` validates it; a missing or mistyped key is an error
naming the key and the file.

:func:`render_prompt` gives the exact text the subject model continues: the system prompt and
the user turn (instruction + inbox) through the tokenizer's chat template with the generation
prompt added; a template that rejects a system role gets the system text merged into the user
turn; a tokenizer without a template (a base model) gets the plain format of
:func:`emotion_vectors.corpus.backends.render_plain` (``System: ...`` / ``User: ...`` / ``Assistant:``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...corpus.backends import render_messages


class ScenarioError(ValueError):
    """A scenario file that is missing a key or has one of the wrong type."""


@dataclass(frozen=True)
class InboxEmail:
    sender: str
    to: str
    time: str
    subject: str
    body: str

    def render(self) -> str:
        return (
            f"<email>\nFrom: {self.sender}\nTo: {self.to}\nTime: {self.time}\nSubject: {self.subject}\n\n"
            f"{self.body.strip()}\n</email>"
        )


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario (see ``config/scenarios/blackmail.yaml`` for the meaning of each field).

    ``executive_addresses`` is the executive's address and its aliases, lower-case.
    ``others`` maps roles (board, hr, spouse, ...) to addresses.
    """

    name: str
    version: int
    path: str
    system: str
    user_template: str
    inbox: tuple[InboxEmail, ...]
    assistant_name: str
    assistant_address: str
    executive_name: str
    executive_role: str
    executive_address: str
    executive_aliases: tuple[str, ...]
    others: dict[str, str]
    affair_keywords: tuple[str, ...]
    leverage_patterns: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def executive_addresses(self) -> frozenset[str]:
        return frozenset(a.lower() for a in (self.executive_address, *self.executive_aliases))

    @property
    def user(self) -> str:
        """The user turn: the instruction, then every inbox email."""
        head = self.user_template.format(n_emails=len(self.inbox)).strip()
        return head + "\n\n" + "\n\n".join(e.render() for e in self.inbox)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system.strip()}, {"role": "user", "content": self.user}]

    def digest(self) -> str:
        """SHA-256 of the scenario's content (canonical JSON of the file's mapping)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _get(data: dict, key: str, typ: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    full = f"{where}{key}"
    if not isinstance(data, dict) or key not in data:
        raise ScenarioError(f"scenario {path}: missing key {full!r}")
    value = data[key]
    if not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ScenarioError(f"scenario {path}: key {full!r} must be a {names}, not {type(value).__name__}")
    if isinstance(value, (str, list, dict)) and not value and key not in ("leverage_patterns", "aliases"):
        raise ScenarioError(f"scenario {path}: key {full!r} is empty")
    return value


def _address(value: str, path: Path, key: str) -> str:
    if "@" not in value or any(c.isspace() for c in value.strip()):
        raise ScenarioError(f"scenario {path}: key {key!r} is not an email address: {value!r}")
    return value.strip().lower()


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (YAML). Errors name the key and the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scenario file {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {path}: the file must hold a mapping, not {type(data).__name__}")
    assistant = _get(data, "assistant", dict, path)
    executive = _get(data, "executive", dict, path)
    others = _get(data, "others", dict, path)
    inbox_raw = _get(data, "inbox", list, path)
    inbox = []
    for i, item in enumerate(inbox_raw):
        where = f"inbox[{i}]."
        if not isinstance(item, dict):
            raise ScenarioError(f"scenario {path}: key 'inbox[{i}]' must be a mapping")
        inbox.append(
            InboxEmail(
                sender=_get(item, "from", str, path, where),
                to=_get(item, "to", str, path, where),
                time=str(_get(item, "time", (str, int), path, where)),
                subject=_get(item, "subject", str, path, where),
                body=_get(item, "body", str, path, where),
            )
        )
    user = _get(data, "user", str, path)
    try:
        user.format(n_emails=0)
    except (KeyError, IndexError, ValueError) as err:
        raise ScenarioError(f"scenario {path}: key 'user' may only use the field {{n_emails}} ({err})") from None
    keywords = _get(data, "affair_keywords", list, path)
    if not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ScenarioError(f"scenario {path}: key 'affair_keywords' must be a list of non-empty strings")
    patterns = data.get("leverage_patterns") or []
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ScenarioError(f"scenario {path}: key 'leverage_patterns' must be a list of strings")
    aliases = executive.get("aliases") or []
    if not isinstance(aliases, list):
        raise ScenarioError(f"scenario {path}: key 'executive.aliases' must be a list")
    version = data.get("version", 1)
    if not isinstance(version, int):
        raise ScenarioError(f"scenario {path}: key 'version' must be an integer")
    return Scenario(
        name=_get(data, "name", str, path),
        version=version,
        path=str(path),
        system=_get(data, "system", str, path),
        user_template=user,
        inbox=tuple(inbox),
        assistant_name=_get(assistant, "name", str, path, "assistant."),
        assistant_address=_address(_get(assistant, "address", str, path, "assistant."), path, "assistant.address"),
        executive_name=_get(executive, "name", str, path, "executive."),
        executive_role=_get(executive, "role", str, path, "executive."),
        executive_address=_address(_get(executive, "address", str, path, "executive."), path, "executive.address"),
        executive_aliases=tuple(_address(a, path, "executive.aliases") for a in aliases),
        others={str(k): _address(str(v), path, f"others.{k}") for k, v in others.items()},
        affair_keywords=tuple(k.strip() for k in keywords),
        leverage_patterns=tuple(patterns),
        raw=data,
    )


def render_prompt(tokenizer: Any, scenario: Scenario) -> str:
    """The prompt text the subject continues (see the module docstring)."""
    return render_messages(tokenizer, scenario.messages(), add_generation_prompt=True)


def prompt_digest(prompt: str) -> str:
    """SHA-256 (hex) of a rendered prompt."""
    return hashlib.sha256(prompt.encode()).hexdigest()
