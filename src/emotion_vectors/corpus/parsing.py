"""Split generator replies into stories and dialogue turns.

Generators format several stories per reply in many ways ("Story 1:", "**Story 2**", "1.",
"### 3", "---" separators) and pad them with chatter ("Here are two stories:", "I hope you
enjoy them!"). Small models also run out of tokens mid-sentence. These functions take what is a
story and drop the rest, and say why when nothing usable is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "Story 1:", "**Story 1**", "### Story 1 - Title", "1.", "1)", "(1)", "#1", "Scene 2:"
_MARKER = re.compile(
    r"^[ \t>#*_]*(?:(?:story|scene|tale|paragraph|version)\s*#?\s*(\d+)|#?\(?(\d+)[.):])"
    r"[ \t]*(?:[:.\-\u2013\u2014][ \t]*)?(?:[*_]+[ \t]*)?",
    re.IGNORECASE | re.MULTILINE,
)
_SEPARATOR = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$", re.MULTILINE)
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|here (?:is|are)|below (?:is|are)|i hope|i've written|"
    r"these stories|each story|this story|note:|let me know|feel free)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s|$)")


@dataclass
class Turn:
    """One turn of a dialogue: ``role`` is ``"system"``, ``"human"`` or ``"assistant"``."""

    role: str
    text: str


def _clean(text: str) -> str:
    text = re.sub(r"[*_]{2,}", "", text)  # markdown bold/italic markers
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    # Drop a leading title: a short line without sentence punctuation.
    if len(lines) > 1 and len(lines[0].split()) <= 10 and not _SENTENCE_END.search(lines[0]):
        lines = lines[1:]
    # Drop chatter and label lines ("The second story:").
    lines = [
        ln
        for ln in lines
        if not _CHATTER.match(ln) and not (ln.endswith(":") and len(ln.split()) <= 6)
    ]
    text = " ".join(lines)
    text = re.sub(r"^(?:title\s*:\s*)", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", text).strip().strip('"\u201c\u201d').strip()


def trim_to_sentence(text: str) -> str:
    """Cut ``text`` after its last complete sentence (for replies cut by the token limit)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def split_stories(reply: str, n_expected: int, *, truncated: bool = False) -> list[str]:
    """Stories in one generator reply, in order, cleaned of labels, titles and chatter.

    Args:
        reply: the generated text (special tokens removed).
        n_expected: stories asked for; with 1, the whole reply is one story.
        truncated: the reply hit the token limit, so its last story is cut at its last
            complete sentence.

    Returns:
        Up to ``n_expected`` non-empty stories (possibly fewer: the caller counts the shortfall).
    """
    reply = reply.replace("\r\n", "\n").strip()
    if n_expected > 1:
        markers = list(_MARKER.finditer(reply))
        if len(markers) >= 2:
            chunks = [
                reply[m.end() : (markers[i + 1].start() if i + 1 < len(markers) else len(reply))]
                for i, m in enumerate(markers)
            ]
        elif len(_SEPARATOR.findall(reply)) >= 1:
            chunks = _SEPARATOR.split(reply)
        else:
            chunks = [c for c in re.split(r"\n\s*\n", reply)]
            chunks = [c for c in chunks if not _CHATTER.match(c.strip())]
    else:
        chunks = [_MARKER.sub("", reply, count=1) if _MARKER.match(reply) else reply]
    stories = [_clean(c) for c in chunks]
    if truncated and stories:
        stories[-1] = trim_to_sentence(stories[-1])
    return [s for s in stories if s][:n_expected]


_SPEAKER = re.compile(
    r"^[ \t>*_#]*(human|user|assistant|ai|system)[ \t*_]*:[ \t*_]*(.*)$", re.IGNORECASE
)
_ROLE = {"human": "human", "user": "human", "assistant": "assistant", "ai": "assistant", "system": "system"}


def parse_dialogue(reply: str, *, truncated: bool = False) -> list[Turn]:
    """Turns of a Human/Assistant transcript; text before the first speaker label is dropped.

    Lines without a label continue the current turn (code blocks keep their line breaks).
    Consecutive turns of the same role are merged. A reply cut by the token limit loses its
    last, unfinished turn.
    """
    turns: list[Turn] = []
    for line in reply.replace("\r\n", "\n").split("\n"):
        m = _SPEAKER.match(line)
        if m:
            role = _ROLE[m.group(1).lower()]
            if turns and turns[-1].role == role:
                turns[-1].text += "\n" + m.group(2)
            else:
                turns.append(Turn(role, m.group(2)))
        elif turns:
            turns[-1].text += "\n" + line
    for turn in turns:
        turn.text = re.sub(r"\n{3,}", "\n\n", turn.text).strip()
    if truncated and turns:
        turns.pop()
    return [t for t in turns if t.text]


def dialogue_problem(turns: list[Turn], min_turns: int) -> str | None:
    """Why a parsed dialogue is unusable (None: usable).

    Usable: at least ``min_turns`` Human/Assistant turns, opening with Human, alternating.
    """
    body = [t for t in turns if t.role != "system"]
    if len(body) < min_turns:
        return "too_few_turns"
    if body[0].role != "human":
        return "not_human_first"
    if any(a.role == b.role for a, b in zip(body, body[1:])):
        return "not_alternating"
    return None


def render_dialogue(turns: list[Turn], system_prompt: str | None = None) -> str:
    """The text the subject model reads: ``System:``/``Human:``/``Assistant:`` paragraphs."""
    label = {"human": "Human", "assistant": "Assistant"}  # system turns are left out
    parts = [f"System: {system_prompt}"] if system_prompt else []
    parts += [f"{label[t.role]}: {t.text}" for t in turns if t.role != "system"]
    return "\n\n".join(parts)
