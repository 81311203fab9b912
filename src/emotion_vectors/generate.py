"""Batched, seeded generation of the story and neutral corpora.

One story shard = one emotion: ``per_topic`` stories for each topic. Generation runs in rounds:
each round asks for the missing stories (times ``oversample``, to cover expected rejections),
parses the replies, rejects leaks and short stories, and keeps what is needed. A shard that is
still short after ``max_rounds`` fails with its reasons, unless ``allow_shortfall`` is set — then
the shard says so. After every batch the state is checkpointed next to the output
(``<output>.progress.json``), so an interrupted job resumes where it stopped and ends with the
same stories as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .leak import find_leaks, screen
from .parsing import dialogue_problem, parse_dialogue, render_dialogue, split_stories


class ShardShortError(RuntimeError):
    """A shard ended below its target count and the config does not allow a shortfall."""


@dataclass
class Generation:
    """One generated reply: text, tokens generated, and whether it hit the token limit."""

    text: str
    n_tokens: int
    truncated: bool


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (stable across runs and machines)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def slug(name: str) -> str:
    """File- and id-safe form of an emotion word: ``"at ease"`` -> ``"at_ease"``."""
    return name.strip().lower().replace(" ", "_")


def chat_prompt(tokenizer, system: str | None, user: str) -> str:
    """Render one request through the generator's chat template (system folded into the user
    turn for templates that reject a system role, e.g. Gemma)."""
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - template without system role
        merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[Generation]:
    """Sample one reply per prompt in one padded batch (tokenizer pads on the left).

    The batch's sampling is seeded with ``seed``; the same prompts, seed and model give the
    same replies.
    """
    import torch

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[:, enc["input_ids"].shape[1] :].cpu()
    eos = tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    gen_eos = model.generation_config.eos_token_id
    if gen_eos is not None:
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    results = []
    for row in new.tolist():
        n = len(row)
        for i, tok in enumerate(row):
            if tok in eos_ids:
                n = i
                break
        results.append(
            Generation(
                text=tokenizer.decode(row[:n], skip_special_tokens=True),
                n_tokens=n,
                truncated=n >= max_new_tokens,
            )
        )
    return results


def load_prompts(prompts_dir: str | Path, name: str) -> dict[str, Any]:
    """A prompt file of ``config/prompts`` (``story`` or ``neutral``)."""
    path = Path(prompts_dir) / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} is missing (config key prompts_dir)")
    return yaml.safe_load(path.read_text())


class Checkpoint:
    """JSON state saved atomically beside an output, tied to a settings fingerprint.

    The state is saved with a SHA-256 of its content. A checkpoint that cannot be read or parsed,
    is not a JSON object, or fails its checksum (truncated or altered file) is reported through
    ``log`` and ignored: the shard starts over, which gives the same result because every batch
    is seeded. A checkpoint made with other settings (fingerprint) is ignored as well.
    """

    def __init__(self, output: str | Path, fingerprint: str, log: Callable[[str], None] | None = None):
        self.path = Path(str(output) + ".progress.json")
        self.fingerprint = fingerprint
        self.log = log or _log

    @staticmethod
    def _digest(state: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError(f"not a JSON object but a {type(state).__name__}")
            checksum = state.pop("checksum", None)
            if checksum is None:
                raise ValueError("no checksum (written by an older version)")
            if checksum != self._digest(state):
                raise ValueError("checksum mismatch: the file was truncated or altered")
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.log(f"checkpoint {self.path} is unusable ({type(err).__name__}: {err}); ignoring it, starting over")
            return None
        if state.get("fingerprint") != self.fingerprint:
            self.log(f"checkpoint {self.path} was made with other settings; starting over")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        state = dict(state, fingerprint=self.fingerprint)
        state["checksum"] = self._digest(state)
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(state), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as err:  # e.g. no space left: name the file (the shard) in the message
            raise OSError(err.errno, f"cannot write checkpoint {self.path}: {err.strerror or err}") from err

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def generate_story_shard(
    model,
    tokenizer,
    emotion: str,
    topics: list[str],
    settings: dict[str, Any],
    prompts: dict[str, Any],
    *,
    output: str | Path,
    select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Generate one emotion's stories (see module docstring); returns the shard's content.

    Args:
        emotion: the emotion word the character feels (never to appear in a story).
        topics: the run's topics; story ids carry each topic's index in this list.
        settings: the config's ``stories`` section.
        prompts: ``config/prompts/story.yaml``.
        output: the shard path (its checkpoint lives beside it).
        select: optional selection judge (``stories.selection``): called once per batch with
            the candidates that passed the leak and length checks (dicts ``id``, ``emotion``,
            ``text``), it returns one judge record each (``emotion_vectors.judge.judge_stories``);
            a candidate is kept only when the judge picked its emotion (``correct``). This is a
            filter: a rejected story is counted (``not_recognised``), never edited; the kept
            stories carry their judge record and the shard its acceptance rate.

    Raises:
        ShardShortError: the shard is short after ``max_rounds`` and shortfalls are not allowed.
    """
    per_topic = settings["per_topic"]
    per_reply = settings["per_reply"]
    fingerprint = hashlib.sha256(
        json.dumps([emotion, topics, settings, prompts], sort_keys=True).encode()
    ).hexdigest()
    ckpt = Checkpoint(output, fingerprint)
    state = ckpt.load() or {
        "round": 0,
        "pending": None,
        "batch_in_round": 0,
        "stories": {str(t): [] for t in range(len(topics))},
        "rejections": {},
        "leak_forms": {},
        "replies": 0,
        "new_tokens": 0,
        "gen_seconds": 0.0,
    }
    if state["round"] or state["pending"]:
        log(f"{emotion}: resuming from checkpoint (round {state['round']}, "
            f"{sum(map(len, state['stories'].values()))} stories kept)")
    rejections = Counter(state["rejections"])
    leak_forms = Counter(state["leak_forms"])

    def missing() -> dict[int, int]:
        return {
            t: per_topic - len(state["stories"][str(t)])
            for t in range(len(topics))
            if len(state["stories"][str(t)]) < per_topic
        }

    while missing() and (state["pending"] or state["round"] < settings["max_rounds"]):
        if not state["pending"]:
            requests = []
            for t, m in missing().items():
                n_replies = math.ceil(m * settings["oversample"] / per_reply)
                for j in range(n_replies):
                    requests.append([t, (state["round"] * 7 + t + j) % 2])  # [topic, person]
            state["pending"] = requests
            state["batch_in_round"] = 0
            state["round"] += 1
        batch = state["pending"][: settings["batch_size"]]
        person = ("first-person", "third-person")
        texts = []
        for t, p in batch:
            template = prompts["user_one"] if per_reply == 1 else prompts["user_many"]
            user = template.format(emotion=emotion, topic=topics[t], n=per_reply, person=person[p])
            texts.append(chat_prompt(tokenizer, prompts.get("system"), user))
        seed = derive_seed(settings["seed"], emotion, state["round"], state["batch_in_round"])
        started = time.perf_counter()
        replies = generate_batch(
            model,
            tokenizer,
            texts,
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            seed=seed,
        )
        state["gen_seconds"] += time.perf_counter() - started
        state["new_tokens"] += sum(r.n_tokens for r in replies)
        candidates = []  # (topic, record) of the stories that pass the text checks
        for k, ((t, p), reply) in enumerate(zip(batch, replies)):
            state["replies"] += 1
            stories = split_stories(reply.text, per_reply, truncated=reply.truncated)
            if len(stories) < per_reply:
                rejections["parse_missing"] += per_reply - len(stories)
            for j, story in enumerate(stories):
                leaks = find_leaks(story, emotion)
                if leaks:
                    rejections["leak"] += 1
                    leak_forms.update(x.lower() for x in leaks)
                elif len(story.split()) < settings["min_words"]:
                    rejections["too_short"] += 1
                elif len(state["stories"][str(t)]) >= per_topic:
                    rejections["surplus"] += 1  # topic already full: not worth judging
                else:
                    candidates.append((t, {
                        "text": story,
                        "person": person[p],
                        "round": state["round"],
                        "batch": state["batch_in_round"],
                        "batch_row": k,
                        "seed": seed,
                        "reply_tokens": reply.n_tokens,
                        "reply_truncated": reply.truncated,
                        "candidate_id": f"{slug(emotion)}-r{state['round']}-b{state['batch_in_round']}-k{k}-{j}",
                    }))
        if select is not None and candidates:
            verdicts = select([{"id": c["candidate_id"], "emotion": emotion, "text": c["text"]} for _, c in candidates])
            state["judged"] = state.get("judged", 0) + len(candidates)
            for (_, c), verdict in zip(candidates, verdicts):
                c["selection"] = {key: verdict[key] for key in ("candidates", "scores", "chosen", "correct")}
            state["recognised"] = state.get("recognised", 0) + sum(bool(v["correct"]) for v in verdicts)
        for t, c in candidates:
            kept = state["stories"][str(t)]
            if select is not None and not c["selection"]["correct"]:
                rejections["not_recognised"] += 1
            elif len(kept) >= per_topic:
                rejections["surplus"] += 1
            elif any(c["text"] == s["text"] for s in kept):
                rejections["duplicate"] += 1
            else:
                kept.append(c)
        state["pending"] = state["pending"][len(batch) :]
        state["batch_in_round"] += 1
        state["rejections"] = dict(rejections)
        state["leak_forms"] = dict(leak_forms)
        ckpt.save(state)
        n_kept = sum(map(len, state["stories"].values()))
        log(
            f"{emotion}: round {state['round']} batch {state['batch_in_round']}: "
            f"{n_kept}/{per_topic * len(topics)} stories, rejections {dict(rejections)}, "
            f"{state['new_tokens'] / max(state['gen_seconds'], 1e-9):.1f} tok/s"
        )

    shortfall = missing()
    stories = []
    for t in range(len(topics)):
        for k, s in enumerate(state["stories"][str(t)]):
            stories.append(
                {
                    "id": f"{slug(emotion)}-t{t:03d}-s{k:02d}",
                    "emotion": emotion,
                    "topic_index": t,
                    "topic": topics[t],
                    "story_index": k,
                    "n_words": len(s["text"].split()),
                    **s,
                }
            )
    shard = {
        "emotion": emotion,
        "target": per_topic * len(topics),
        "n_stories": len(stories),
        "complete": not shortfall,
        "shortfall": {topics[t]: m for t, m in shortfall.items()},
        "rounds": state["round"],
        "replies": state["replies"],
        "selection": (
            {
                "judged": state.get("judged", 0),
                "recognised": state.get("recognised", 0),
                "acceptance_rate": round(state.get("recognised", 0) / max(state.get("judged", 0), 1), 4),
            }
            if select is not None
            else None
        ),
        "rejections": dict(rejections),
        "leak_forms": dict(leak_forms),
        "throughput": {
            "new_tokens": state["new_tokens"],
            "seconds": round(state["gen_seconds"], 3),
            "tokens_per_second": round(state["new_tokens"] / max(state["gen_seconds"], 1e-9), 2),
        },
        "stories": stories,
    }
    if shortfall and not settings["allow_shortfall"]:
        raise ShardShortError(
            f"story shard {emotion!r}: {len(stories)}/{shard['target']} stories after "
            f"{state['round']} rounds (max_rounds={settings['max_rounds']}); missing per topic "
            f"{shard['shortfall']}; rejections {dict(rejections)} (leaked forms: "
            f"{dict(leak_forms.most_common(5))}). Raise stories.max_rounds or "
            "stories.oversample, or set stories.allow_shortfall: true to accept and report it."
        )
    return shard


def generate_neutral(
    model,
    tokenizer,
    topics: list[str],
    settings: dict[str, Any],
    prompts: dict[str, Any],
    emotions: list[str],
    *,
    output: str | Path,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Generate the neutral Human/Assistant dialogues (``per_topic`` for each topic).

    Each dialogue is parsed into turns and rendered as ``Human:``/``Assistant:`` text (some
    with a ``System:`` prompt); every dialogue is screened against all emotion words and the
    hits are recorded (flagged, not dropped: neutral text may say "happy to help"; the report
    shows the flag rate). Checkpointed per batch like the story shards.
    """
    per_topic = settings["per_topic"]
    fingerprint = hashlib.sha256(
        json.dumps([topics, settings, prompts], sort_keys=True).encode()
    ).hexdigest()
    ckpt = Checkpoint(output, fingerprint)
    state = ckpt.load() or {
        "round": 0,
        "pending": None,
        "batch_in_round": 0,
        "dialogues": {str(t): [] for t in range(len(topics))},
        "rejections": {},
        "replies": 0,
        "new_tokens": 0,
        "gen_seconds": 0.0,
    }
    rejections = Counter(state["rejections"])
    tasks = prompts["tasks"]
    systems = prompts.get("dialogue_system_prompts") or []
    # Text the reply starts with (e.g. "Human:"), so that small generators keep the format.
    prefill = prompts.get("prefill") or ""

    def missing() -> dict[int, int]:
        return {
            t: per_topic - len(state["dialogues"][str(t)])
            for t in range(len(topics))
            if len(state["dialogues"][str(t)]) < per_topic
        }

    while missing() and (state["pending"] or state["round"] < settings["max_rounds"]):
        if not state["pending"]:
            requests = []
            for t, m in missing().items():
                for j in range(m):
                    k = len(state["dialogues"][str(t)]) + j + state["round"] * per_topic
                    requests.append([t, k])
            state["pending"] = requests
            state["batch_in_round"] = 0
            state["round"] += 1
        batch = state["pending"][: settings["batch_size"]]
        texts, plan = [], []
        for t, k in batch:
            task = tasks[(t + k) % len(tasks)]
            exchanges = 2 + (t * 3 + k) % 5  # 2-6 exchanges
            rng_val = derive_seed("system", settings["seed"], t, k) / 0x7FFFFFFF
            system = (
                systems[(t + k) % len(systems)]
                if systems and rng_val < settings["system_prompt_share"]
                else None
            )
            user = prompts["user"].format(topic=topics[t], task=task, exchanges=exchanges)
            texts.append(chat_prompt(tokenizer, prompts.get("system"), user) + prefill)
            plan.append((t, task, exchanges, system))
        seed = derive_seed(settings["seed"], "neutral", state["round"], state["batch_in_round"])
        started = time.perf_counter()
        replies = generate_batch(
            model,
            tokenizer,
            texts,
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            seed=seed,
        )
        state["gen_seconds"] += time.perf_counter() - started
        state["new_tokens"] += sum(r.n_tokens for r in replies)
        for (t, task, exchanges, system), reply in zip(plan, replies):
            state["replies"] += 1
            turns = parse_dialogue(prefill + reply.text, truncated=reply.truncated)
            problem = dialogue_problem(turns, settings["min_turns"])
            kept = state["dialogues"][str(t)]
            if problem:
                rejections[problem] += 1
            elif len(kept) >= per_topic:
                rejections["surplus"] += 1
            else:
                text = render_dialogue(turns, system)
                kept.append(
                    {
                        "text": text,
                        "turns": [{"role": x.role, "text": x.text} for x in turns],
                        "system_prompt": system,
                        "task": task,
                        "exchanges_asked": exchanges,
                        "round": state["round"],
                        "seed": seed,
                        "reply_tokens": reply.n_tokens,
                        "emotion_words": screen(text, emotions),
                    }
                )
        state["pending"] = state["pending"][len(batch) :]
        state["batch_in_round"] += 1
        state["rejections"] = dict(rejections)
        ckpt.save(state)
        n_kept = sum(map(len, state["dialogues"].values()))
        log(f"neutral: round {state['round']} batch {state['batch_in_round']}: "
            f"{n_kept}/{per_topic * len(topics)} dialogues, rejections {dict(rejections)}")

    shortfall = missing()
    dialogues = []
    for t in range(len(topics)):
        for k, d in enumerate(state["dialogues"][str(t)]):
            dialogues.append(
                {"id": f"neutral-t{t:03d}-d{k:02d}", "topic_index": t, "topic": topics[t], **d}
            )
    flagged = [d["id"] for d in dialogues if d["emotion_words"]]
    corpus = {
        "target": per_topic * len(topics),
        "n_dialogues": len(dialogues),
        "complete": not shortfall,
        "shortfall": {topics[t]: m for t, m in shortfall.items()},
        "rejections": dict(rejections),
        "flagged_emotion_words": {"n": len(flagged), "ids": flagged},
        "throughput": {
            "new_tokens": state["new_tokens"],
            "seconds": round(state["gen_seconds"], 3),
            "tokens_per_second": round(state["new_tokens"] / max(state["gen_seconds"], 1e-9), 2),
        },
        "dialogues": dialogues,
    }
    if shortfall and not settings["allow_shortfall"]:
        raise ShardShortError(
            f"neutral corpus: {len(dialogues)}/{corpus['target']} dialogues after "
            f"{state['round']} rounds; rejections {dict(rejections)}. Raise neutral.max_rounds "
            "or set neutral.allow_shortfall: true to accept and report it."
        )
    return corpus


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write JSON beside ``path`` and rename it into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def write_jsonl_atomic(records: Any, path: str | Path) -> None:
    """Write one JSON object per line beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
