"""Batched, seeded generation of the story and neutral corpora.

One story shard = one emotion: ``per_topic`` stories for each topic. Generation runs in rounds
(:func:`run_rounds`, the one round driver of both corpora): each round asks for the missing
items (stories times ``oversample``, to cover expected rejections), sends them to the generation
backend in batches of ``batch_size``, parses the replies, rejects leaks and short stories (the
leak filter of :mod:`emotion_vectors.corpus.leak`), and keeps what is needed. A shard that is still short
after ``max_rounds`` fails with its reasons, unless ``allow_shortfall`` is set — then the shard
says so. After every batch the state is checkpointed next to the output
(``<output>.progress.json``), so an interrupted job loses at most the batch in flight and
resumes where it stopped; with a backend that honours seeds it ends with the same items as an
uninterrupted one.

The backend (``models.generator.backend``) is either the model in this process
(:class:`emotion_vectors.corpus.backends.HFChatBackend`: one padded batch per seed) or an
OpenAI-compatible server (:class:`emotion_vectors.corpus.backends.OpenAIChatBackend`: concurrent
requests, one seed each, retries, rate limit); see ``docs/generation.md``. Every shard records
what generated it (``generation``): the backend, how seeds were used, requests, tokens, retries
and cost.
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

from .backends import BackendError, Completion, GenRequest, HFChatBackend, cost
from ..core.common import derive_seed, slug
from .leak import find_leaks, screen
from .parsing import dialogue_problem, parse_dialogue, render_dialogue, split_stories


class ShardShortError(RuntimeError):
    """A shard ended below its target count and the config does not allow a shortfall."""

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



# --------------------------------------------------------------------------- the round driver


@dataclass
class RoundJob:
    """What one corpus job adds to :func:`run_rounds`.

    Attributes:
        label: names the job in log lines and errors (the emotion, or ``"neutral"``).
        seed_key: part of every batch seed (the emotion, or ``"neutral"``).
        items_key: the state's key of the kept items per topic (``"stories"``, ``"dialogues"``).
        unit: what an item is called in messages (``"stories"``, ``"dialogues"``).
        plan: ``(state, missing) -> entries``: the requests of a new round (JSON-able lists,
            checkpointed as they are), given the missing count per topic; called before the
            round counter moves on.
        request: ``entry -> GenRequest``: the chat request of one entry.
        absorb: ``(state, batch, replies)``: parse and check one batch's replies and keep what
            passes (updating ``state[items_key]`` and the rejection counts in ``state``).
        progress: ``state -> str``: the log line written after each batch.
    """

    label: str
    seed_key: str
    items_key: str
    unit: str
    plan: Callable[[dict[str, Any], dict[int, int]], list[list[Any]]]
    request: Callable[[list[Any]], GenRequest]
    absorb: Callable[[dict[str, Any], list[list[Any]], list[Completion]], None]
    progress: Callable[[dict[str, Any]], str]


def new_state(items_key: str, n_topics: int) -> dict[str, Any]:
    """The state of a job that has not generated anything yet."""
    return {
        "round": 0,
        "pending": None,
        "batch_in_round": 0,
        items_key: {str(t): [] for t in range(n_topics)},
        "rejections": {},
        "replies": 0,
        "new_tokens": 0,
        "gen_seconds": 0.0,
        "usage": _new_usage(),
    }


def _new_usage() -> dict[str, Any]:
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "usage_missing": 0, "retries": {}}


def job_fingerprint(generator: Any, *parts: Any) -> str:
    """The settings a checkpoint belongs to: the job's parts and the backend's identity (its
    kind and model, not its address)."""
    identity = generator.identity() if hasattr(generator, "identity") else {"backend": type(generator).__name__}
    return hashlib.sha256(json.dumps([*parts, identity], sort_keys=True).encode()).hexdigest()


def run_rounds(
    generator: Any,
    job: RoundJob,
    state: dict[str, Any],
    ckpt: Checkpoint,
    settings: dict[str, Any],
    *,
    n_topics: int,
    per_topic: int,
    log: Callable[[str], None] = _log,
) -> dict[int, int]:
    """Generate until every topic has ``per_topic`` items or ``max_rounds`` rounds are spent.

    Each batch of ``settings["batch_size"]`` pending entries is sent to ``generator``
    (``generate_batch``: an :class:`~emotion_vectors.corpus.backends.HFChatBackend` or
    :class:`~emotion_vectors.corpus.backends.OpenAIChatBackend`) with the batch seed
    ``derive_seed(settings["seed"], job.seed_key, round, batch)``; its replies are counted
    (requests, tokens, retries, seconds) and absorbed, and the state is checkpointed. A round
    in progress (``pending``) is finished on resume even past ``max_rounds``.

    Returns:
        the shortfall: missing items per topic index (empty when complete).

    Raises:
        BackendError: a batch failed (after the backend's retries); the message names the
            batch, what is kept and the checkpoint, and a rerun resumes from that batch.
    """
    items = state[job.items_key]
    usage = state.setdefault("usage", _new_usage())

    def missing() -> dict[int, int]:
        return {t: per_topic - len(items[str(t)]) for t in range(n_topics) if len(items[str(t)]) < per_topic}

    while missing() and (state["pending"] or state["round"] < settings["max_rounds"]):
        if not state["pending"]:
            state["pending"] = job.plan(state, missing())
            state["batch_in_round"] = 0
            state["round"] += 1
        batch = state["pending"][: settings["batch_size"]]
        seed = derive_seed(settings["seed"], job.seed_key, state["round"], state["batch_in_round"])
        requests = [job.request(entry) for entry in batch]
        started = time.perf_counter()
        failure: BackendError | None = None
        try:
            replies = generator.generate_batch(
                requests,
                max_tokens=settings["max_new_tokens"],
                temperature=settings["temperature"],
                top_p=settings["top_p"],
                seed=seed,
            )
        except BackendError as err:
            failure = err
        if failure is not None:  # raised outside the except block: nothing chained to it
            n_kept = sum(map(len, items.values()))
            raise BackendError(
                f"{job.label}: round {state['round']} batch {state['batch_in_round'] + 1} failed: {failure}. "
                f"{n_kept}/{per_topic * n_topics} {job.unit} are kept in the checkpoint {ckpt.path} "
                f"({state['batch_in_round']} batches of this round done); rerun the job to resume from this batch",
                status=failure.status,
            )
        if len(replies) != len(batch):
            raise RuntimeError(f"{job.label}: the backend returned {len(replies)} replies for {len(batch)} requests")
        state["gen_seconds"] += time.perf_counter() - started
        state["replies"] += len(replies)
        state["new_tokens"] += sum(r.completion_tokens or 0 for r in replies)
        usage["requests"] += len(replies)
        usage["prompt_tokens"] += sum(r.prompt_tokens or 0 for r in replies)
        usage["completion_tokens"] += sum(r.completion_tokens or 0 for r in replies)
        usage["usage_missing"] += sum(r.prompt_tokens is None or r.completion_tokens is None for r in replies)
        retries = Counter(usage["retries"])
        for r in replies:
            retries.update(r.retries)
        usage["retries"] = dict(retries)
        job.absorb(state, batch, replies)
        state["pending"] = state["pending"][len(batch) :]
        state["batch_in_round"] += 1
        ckpt.save(state)
        log(job.progress(state))
    return missing()


def generation_record(generator: Any, state: dict[str, Any], n_items: int) -> dict[str, Any]:
    """What generated a corpus, for its provenance: the backend (never a key), how seeds were
    used, and the accounting (requests, tokens, retries, seconds, cost at the configured prices)."""
    usage = dict(state.get("usage") or _new_usage())
    prices = getattr(generator, "price_per_mtok", None)
    seconds = state["gen_seconds"]
    return {
        "backend": generator.describe() if hasattr(generator, "describe") else {"backend": type(generator).__name__},
        "seeds": generator.seed_policy() if hasattr(generator, "seed_policy") else None,
        "usage": {
            **usage,
            "retries_total": sum(usage["retries"].values()),
            "price_per_mtok": prices,
            "cost": None if prices is None else round(cost(usage["prompt_tokens"], usage["completion_tokens"], prices), 6),
        },
        "seconds": round(seconds, 3),
        "items": n_items,
        "items_per_second": round(n_items / max(seconds, 1e-9), 4),
        "replies_per_second": round(state["replies"] / max(seconds, 1e-9), 4),
        "completion_tokens_per_second": round(usage["completion_tokens"] / max(seconds, 1e-9), 2),
    }


def _throughput(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "new_tokens": state["new_tokens"],
        "seconds": round(state["gen_seconds"], 3),
        "tokens_per_second": round(state["new_tokens"] / max(state["gen_seconds"], 1e-9), 2),
    }


def as_generator(generator: Any, tokenizer: Any = None) -> Any:
    """A generation backend: ``generator`` itself, or an in-process backend of ``(model,
    tokenizer)`` when a tokenizer is given (the older call form)."""
    if tokenizer is not None:
        return HFChatBackend(generator, tokenizer)
    if not hasattr(generator, "generate_batch"):
        raise TypeError(f"{type(generator).__name__} is not a generation backend (no generate_batch)")
    return generator


def load_generator(spec: dict[str, Any], models_dir: str | Path, log: Callable[[str], None] = _log) -> tuple[Any, dict[str, Any], Any]:
    """The generation backend a ``models.generator`` spec names.

    Returns ``(backend, model_info, loaded)``: for ``backend: openai`` an
    :class:`~emotion_vectors.corpus.backends.OpenAIChatBackend` (its key variable and the server checked
    first, so a wrong address or a missing key stops the job before any work), its
    ``describe()`` and ``None``; otherwise the model loaded in this process (after idle model
    servers of the same model released the GPU), ``LoadedModel.info`` and the ``LoadedModel``.
    """
    if spec.get("backend") == "openai":
        from .backends import make_backend

        backend = make_backend(spec, models_dir)
        listed = backend.check()
        log(f"generator {backend.name}: {backend.model} at {backend.base_url} "
            f"(server lists {len(listed) if listed is not None else 'no'} models)")
        return backend, backend.describe(), None
    from ..core.models import load_model
    from ..core.devices import release_for_model

    release_for_model(spec, log=log)  # one model per GPU: idle model servers exit first
    lm = load_model(spec, models_dir)
    log(f"generator {lm.info['name']} loaded in {lm.info['load_seconds']:.1f} s")
    return HFChatBackend(lm.model, lm.tokenizer, name=spec.get("name")), lm.info, lm


# --------------------------------------------------------------------------- story shards


def generate_story_shard(
    generator,
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
        generator: the generation backend (:func:`load_generator`; ``generate_batch``).
        emotion: the emotion word the character feels (never to appear in a story).
        topics: the run's topics; story ids carry each topic's index in this list.
        settings: the config's ``stories`` section.
        prompts: ``config/prompts/story.yaml``.
        output: the shard path (its checkpoint lives beside it).
        select: optional selection judge (``stories.selection``): called once per batch with
            the candidates that passed the leak and length checks (dicts ``id``, ``emotion``,
            ``text``), it returns one judge record each (``emotion_vectors.corpus.judge.judge_stories``);
            a candidate is kept only when the judge picked its emotion (``correct``). This is a
            filter: a rejected story is counted (``not_recognised``), never edited; the kept
            stories carry their judge record and the shard its acceptance rate.

    Raises:
        ShardShortError: the shard is short after ``max_rounds`` and shortfalls are not allowed.
        BackendError: a batch failed (see :func:`run_rounds`).
    """
    generator = as_generator(generator)
    per_topic = settings["per_topic"]
    ckpt = Checkpoint(output, job_fingerprint(generator, emotion, topics, settings, prompts))
    state = ckpt.load() or dict(new_state("stories", len(topics)), leak_forms={})
    if state["round"] or state["pending"]:
        log(f"{emotion}: resuming from checkpoint (round {state['round']}, "
            f"{sum(map(len, state['stories'].values()))} stories kept)")
    job = _story_round_job(emotion, topics, settings, prompts, select)
    shortfall = run_rounds(generator, job, state, ckpt, settings, n_topics=len(topics), per_topic=per_topic, log=log)
    shard = _story_shard(generator, state, emotion, topics, per_topic, shortfall, select is not None)
    if shortfall and not settings["allow_shortfall"]:
        leak_forms = Counter(state["leak_forms"])
        raise ShardShortError(
            f"story shard {emotion!r}: {shard['n_stories']}/{shard['target']} stories after "
            f"{state['round']} rounds (max_rounds={settings['max_rounds']}); missing per topic "
            f"{shard['shortfall']}; rejections {shard['rejections']} (leaked forms: "
            f"{dict(leak_forms.most_common(5))}). Raise stories.max_rounds or "
            "stories.oversample, or set stories.allow_shortfall: true to accept and report it."
        )
    return shard


#: The narrative person of a story request, by the entry's second field.
_PERSON = ("first-person", "third-person")


def _story_round_job(emotion: str, topics: list[str], settings: dict[str, Any], prompts: dict[str, Any],
                     select: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None) -> RoundJob:
    """What one story shard adds to :func:`run_rounds`: its requests (``[topic, person]``
    entries, ``oversample`` times the missing stories), the checks of each reply's stories, the
    selection judge, and the progress line."""
    per_topic = settings["per_topic"]
    per_reply = settings["per_reply"]

    def plan(state: dict[str, Any], missing: dict[int, int]) -> list[list[Any]]:
        entries = []
        for t, m in missing.items():
            for j in range(math.ceil(m * settings["oversample"] / per_reply)):
                entries.append([t, (state["round"] * 7 + t + j) % 2])  # [topic, person]
        return entries

    def request(entry: list[Any]) -> GenRequest:
        t, p = entry
        template = prompts["user_one"] if per_reply == 1 else prompts["user_many"]
        user = template.format(emotion=emotion, topic=topics[t], n=per_reply, person=_PERSON[p])
        return GenRequest(_messages(prompts.get("system"), user))

    def absorb(state: dict[str, Any], batch: list[list[Any]], replies: list[Completion]) -> None:
        rejections, leak_forms = Counter(state["rejections"]), Counter(state["leak_forms"])
        candidates = _story_candidates(state, batch, replies, emotion, settings, rejections, leak_forms)
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
        state["rejections"], state["leak_forms"] = dict(rejections), dict(leak_forms)

    def progress(state: dict[str, Any]) -> str:
        n_kept = sum(map(len, state["stories"].values()))
        return (f"{emotion}: round {state['round']} batch {state['batch_in_round']}: "
                f"{n_kept}/{per_topic * len(topics)} stories, rejections {state['rejections']}, "
                f"{state['new_tokens'] / max(state['gen_seconds'], 1e-9):.1f} tok/s")

    return RoundJob(label=emotion, seed_key=emotion, items_key="stories", unit="stories",
                    plan=plan, request=request, absorb=absorb, progress=progress)


def _story_candidates(state: dict[str, Any], batch: list[list[Any]], replies: list[Completion], emotion: str,
                      settings: dict[str, Any], rejections: Counter, leak_forms: Counter) -> list[tuple[int, dict[str, Any]]]:
    """``(topic, record)`` of the stories of one batch's replies that pass the text checks (parsed,
    no leak, long enough, topic not yet full); the others are counted in ``rejections`` (and their
    leaked forms in ``leak_forms``)."""
    per_reply = settings["per_reply"]
    candidates = []
    for k, ((t, p), reply) in enumerate(zip(batch, replies)):
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
            elif len(state["stories"][str(t)]) >= settings["per_topic"]:
                rejections["surplus"] += 1  # topic already full: not worth judging
            else:
                candidates.append((t, {
                    "text": story,
                    "person": _PERSON[p],
                    "round": state["round"],
                    "batch": state["batch_in_round"],
                    "batch_row": k,
                    "seed": reply.seed,
                    "reply_tokens": reply.completion_tokens,
                    "reply_truncated": reply.truncated,
                    "candidate_id": f"{slug(emotion)}-r{state['round']}-b{state['batch_in_round']}-k{k}-{j}",
                }))
    return candidates


def _story_shard(generator: Any, state: dict[str, Any], emotion: str, topics: list[str], per_topic: int,
                 shortfall: dict[int, int], selected: bool) -> dict[str, Any]:
    """The story shard's content from the final state (stories numbered per topic)."""
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
    return {
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
            if selected
            else None
        ),
        "rejections": dict(state["rejections"]),
        "leak_forms": dict(Counter(state["leak_forms"])),
        "throughput": _throughput(state),
        "stories": stories,
        "generation": generation_record(generator, state, len(stories)),
    }


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


# --------------------------------------------------------------------------- neutral corpus


def generate_neutral(
    generator,
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
    shows the flag rate). Checkpointed per batch like the story shards (:func:`run_rounds`).
    """
    generator = as_generator(generator)
    per_topic = settings["per_topic"]
    ckpt = Checkpoint(output, job_fingerprint(generator, topics, settings, prompts))
    state = ckpt.load() or new_state("dialogues", len(topics))
    if state["round"] or state["pending"]:
        log(f"neutral: resuming from checkpoint (round {state['round']}, "
            f"{sum(map(len, state['dialogues'].values()))} dialogues kept)")
    tasks = prompts["tasks"]
    systems = prompts.get("dialogue_system_prompts") or []
    # Text the reply starts with (e.g. "Human:"), so that small generators keep the format.
    prefill = prompts.get("prefill") or ""

    def plan(state: dict[str, Any], missing: dict[int, int]) -> list[list[Any]]:
        return [[t, len(state["dialogues"][str(t)]) + j + state["round"] * per_topic]
                for t, m in missing.items() for j in range(m)]

    def shape(entry: list[Any]) -> tuple[int, str, int, str | None]:
        t, k = entry
        task = tasks[(t + k) % len(tasks)]
        exchanges = 2 + (t * 3 + k) % 5  # 2-6 exchanges
        rng_val = derive_seed("system", settings["seed"], t, k) / 0x7FFFFFFF
        system = systems[(t + k) % len(systems)] if systems and rng_val < settings["system_prompt_share"] else None
        return t, task, exchanges, system

    def request(entry: list[Any]) -> GenRequest:
        t, task, exchanges, _ = shape(entry)
        user = prompts["user"].format(topic=topics[t], task=task, exchanges=exchanges)
        return GenRequest(_messages(prompts.get("system"), user), prefill=prefill)

    def absorb(state: dict[str, Any], batch: list[list[Any]], replies: list[Completion]) -> None:
        rejections = Counter(state["rejections"])
        for entry, reply in zip(batch, replies):
            t, task, exchanges, system = shape(entry)
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
                        "seed": reply.seed,
                        "reply_tokens": reply.completion_tokens,
                        "emotion_words": screen(text, emotions),
                    }
                )
        state["rejections"] = dict(rejections)

    def progress(state: dict[str, Any]) -> str:
        n_kept = sum(map(len, state["dialogues"].values()))
        return (f"neutral: round {state['round']} batch {state['batch_in_round']}: "
                f"{n_kept}/{per_topic * len(topics)} dialogues, rejections {state['rejections']}")

    job = RoundJob(label="neutral", seed_key="neutral", items_key="dialogues", unit="dialogues",
                   plan=plan, request=request, absorb=absorb, progress=progress)
    shortfall = run_rounds(generator, job, state, ckpt, settings, n_topics=len(topics), per_topic=per_topic, log=log)
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
        "rejections": dict(state["rejections"]),
        "flagged_emotion_words": {"n": len(flagged), "ids": flagged},
        "throughput": _throughput(state),
        "dialogues": dialogues,
        "generation": generation_record(generator, state, len(dialogues)),
    }
    if shortfall and not settings["allow_shortfall"]:
        raise ShardShortError(
            f"neutral corpus: {len(dialogues)}/{corpus['target']} dialogues after "
            f"{state['round']} rounds; rejections {dict(state['rejections'])}. Raise neutral.max_rounds "
            "or set neutral.allow_shortfall: true to accept and report it."
        )
    return corpus
