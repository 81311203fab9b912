"""Write the shipped GoEmotions sample, ``data/goemotions/test_sample.tsv``, from the full test split.

    .venv/bin/python scripts/goemotions_sample.py test.tsv emotions.txt \\
        --out data/goemotions/test_sample.tsv

Source: GoEmotions (Demszky et al., 2020, "GoEmotions: A Dataset of Fine-Grained Emotions",
ACL 2020), CC BY 4.0, from github.com/google-research/google-research:

- ``goemotions/data/test.tsv`` at commit b91598b43297db06cca27a29fe2d0442dffea029: 5,427 Reddit
  comments, no header, three tab-separated columns (text, comma-separated label ids, comment id),
  double-quote quoting as pandas reads it;
- ``goemotions/data/emotions.txt``: the 28 label names, one a line, line i = label id i.

The sample looks at nothing but the labels. With ``numpy.random.default_rng(seed)``:

1. for each label of ``--labels`` (by default the GoEmotions labels that the default run's
   emotions map to in ``scoring.emotion_labels``), rarest in the split first, texts carrying it
   are drawn without replacement until the sample holds ``--per-label`` of them (or all there
   are); a text drawn for one label counts for every label it carries;
2. as many texts again are drawn from those carrying none of ``--labels`` (other emotions and
   neutral), so each label's check has a large "rest".

``--all`` writes the whole split instead (5,427 texts), in the same format. Rows keep the
split's order. Columns: ``text`` (as read), ``labels`` (label names,
comma-separated, in id order), ``id`` (the comment id); tab-separated with a header, quoted
like the source, so ``emotion_vectors.reading.corpora.read_table`` reads the same texts back. The same
inputs and arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

# GoEmotions labels that the default run's emotions (config/config.yaml `emotions`) map to in
# `scoring.emotion_labels`: afraid/scared/terrified -> fear, happy -> joy, excited -> excitement,
# sad -> sadness, angry/furious/enraged -> anger, grateful/thankful -> gratitude, proud -> pride.
DEFAULT_LABELS = ("fear", "joy", "excitement", "sadness", "anger", "gratitude", "pride")


def read_split(test_tsv: Path, emotions_txt: Path) -> tuple[list[str], list[tuple[str, ...]], list[str]]:
    """Texts, label-name tuples and comment ids of the split, in file order."""
    names = emotions_txt.read_text(encoding="utf-8").split("\n")
    names = [n.strip() for n in names if n.strip()]
    if len(names) != 28 or len(set(names)) != 28:
        raise SystemExit(f"{emotions_txt}: expected 28 distinct label names, got {len(names)}")
    raw = test_tsv.read_text(encoding="utf-8")
    texts, labels, ids = [], [], []
    for i, rec in enumerate(csv.reader(io.StringIO(raw, newline=""), delimiter="\t")):
        if len(rec) != 3:
            raise SystemExit(f"{test_tsv}: row {i + 1} has {len(rec)} fields, not 3")
        text, lab, cid = rec
        try:
            idx = sorted({int(x) for x in lab.split(",")})
        except ValueError:
            raise SystemExit(f"{test_tsv}: row {i + 1}: bad label ids {lab!r}") from None
        if not idx or idx[0] < 0 or idx[-1] >= len(names):
            raise SystemExit(f"{test_tsv}: row {i + 1}: label ids {lab!r} outside 0..{len(names) - 1}")
        texts.append(text)
        labels.append(tuple(names[j] for j in idx))
        ids.append(cid)
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{test_tsv}: repeated comment ids")
    return texts, labels, ids


def sample(labels: list[tuple[str, ...]], strata: list[str], *, per_label: int, seed: int) -> list[int]:
    """Row indices of the sample (sorted), from the label sets alone."""
    rng = np.random.default_rng(seed)
    counts = {s: sum(s in lab for lab in labels) for s in strata}
    chosen: set[int] = set()
    for s in sorted(strata, key=lambda s: (counts[s], s)):  # rarest first
        have = sum(s in labels[i] for i in chosen)
        pool = [i for i, lab in enumerate(labels) if s in lab and i not in chosen]
        need = min(max(per_label - have, 0), len(pool))
        chosen.update(pool[j] for j in rng.choice(len(pool), need, replace=False))
    rest = [i for i, lab in enumerate(labels) if not set(lab) & set(strata)]
    n_rest = min(len(chosen), len(rest))
    chosen.update(rest[j] for j in rng.choice(len(rest), n_rest, replace=False))
    return sorted(chosen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("test_tsv", type=Path, help="GoEmotions goemotions/data/test.tsv (the full split)")
    ap.add_argument("emotions_txt", type=Path, help="GoEmotions goemotions/data/emotions.txt")
    ap.add_argument("--out", type=Path, required=True, help="the sample (tsv)")
    ap.add_argument("--labels", default=",".join(DEFAULT_LABELS),
                    help="comma-separated label names to stratify on (default: %(default)s)")
    ap.add_argument("--per-label", type=int, default=40, help="texts per stratified label (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-total", type=int, default=600, help="refuse a larger sample (default 600)")
    ap.add_argument("--all", action="store_true", help="write the whole split (no sampling, no --max-total)")
    args = ap.parse_args(argv)

    texts, labels, ids = read_split(args.test_tsv, args.emotions_txt)
    known = {n for lab in labels for n in lab} | set(args.emotions_txt.read_text(encoding="utf-8").split())
    strata = [s.strip() for s in args.labels.split(",") if s.strip()]
    unknown = [s for s in strata if s not in known]
    if unknown:
        raise SystemExit(f"--labels: {unknown} are not GoEmotions label names")
    rows = list(range(len(texts))) if args.all else sample(labels, strata, per_label=args.per_label,
                                                           seed=args.seed)
    if not args.all and len(rows) > args.max_total:
        raise SystemExit(f"{len(rows)} texts drawn, more than --max-total {args.max_total}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["text", "labels", "id"])
    for i in rows:
        w.writerow([texts[i], ",".join(labels[i]), ids[i]])
    args.out.write_bytes(buf.getvalue().encode("utf-8"))

    print(f"{len(rows)} of {len(texts)} texts -> {args.out}", file=sys.stderr)
    for s in strata:
        print(f"  {s}: {sum(s in labels[i] for i in rows)} (split: {sum(s in lab for lab in labels)})",
              file=sys.stderr)
    print(f"  none of {strata}: {sum(not set(labels[i]) & set(strata) for i in rows)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
