"""The real-text checks as claims that can fail (docs/scoring.md, "What the checks claim").

Three checks read the run's vectors on human text; each is tested against a null that holds
without any emotion in the vectors, so that the negative-control run (stories with the emotion
taken out of the prompt) claims nothing:

``scoring.corpora_agreement``
    Do two corpora rank the emotions alike (Spearman over emotions of their mean scores from
    the neutral dialogues)? Every corpus of short human text differs from the run's neutral
    dialogues (long, chat-formatted, pooled from token 50) by a shared genre / length / window
    offset, and that offset projects on any set of directions alike: the negative control's
    agreement is 0.75 against the default's 0.79. So the statistic is compared with the same
    statistic computed with each set of shuffled-label vectors (the run's vectors rebuilt with
    the stories' emotion labels permuted within topic, ``vectors.build.shuffled_sets``), which carry
    the same offset: under "the stories' activations do not depend on their emotion label" the
    real vectors and each shuffle's are exchangeable, so ``p = mc_p`` is exact. The claim is
    "the emotion labels add agreement beyond what label-free vectors of the same construction
    show", not "the corpora agree" (they do, for any directions).

``scoring.<corpus>.valence_auroc``
    Does the valence readout score positive texts above negative ones? AUROC with a stratified
    bootstrap interval, one-sided Mann-Whitney p (labels exchangeable under the null), beside
    VADER and the Warriner lexicon on the same texts. Not testable when PC1 is not shown to be
    valence for this run (``readout.check_valence_direction``): then the readout is a PC1
    score and the claim would be about an unnamed direction.

``scoring.<corpus>.emotion_auroc`` (and ``.<emotion>``)
    Does an emotion's vector score texts people labelled with that emotion above the others
    (``scoring.emotion_labels`` maps labels to the run's emotions)? Per emotion: AUROC, one-
    sided Mann-Whitney p, the NRC lexicon's AUROC for the label's category on the same texts,
    and the AUROCs of the same emotion's shuffled-label vectors, the emotion-specific null
    (``p = mc_p``; Holm over the emotions, so with few shuffles a single emotion is "not
    testable" and the claim says how many draws it needs). The family claim tests the mean
    AUROC over the mapped emotions against the same mean for each shuffle (one exact test).

All pure numpy/scipy: the Snakemake scripts feed them the scores and the shuffled projections.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from emotion_vectors.core.claims import Claim, holm, make_claim, mc_p
from emotion_vectors.corpus.lexicon import NRC_CATEGORIES, NRC_SOURCE, CheckError, load_nrc

STAGE = "scoring"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


# --------------------------------------------------------------------------- AUROC


def mannwhitney_auroc(y: np.ndarray, s: np.ndarray, *, alternative: str = "greater") -> dict[str, Any]:
    """AUROC of ``s`` for ``y`` (True = positive) and the Mann-Whitney p of "positives score
    higher" (``alternative="greater"``; ties counted half). NaN scores are dropped. Under the
    null that the labels are exchangeable among the texts, the p-value is valid (exact for
    small samples without ties, normal approximation with tie correction otherwise: scipy's
    ``method="auto"``)."""
    from scipy.stats import mannwhitneyu

    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return {"auroc": None, "p_mannwhitney": None, "n_positive": n1, "n_negative": n0}
    res = mannwhitneyu(s[y], s[~y], alternative=alternative)
    return {"auroc": float(res.statistic) / (n1 * n0), "p_mannwhitney": float(res.pvalue),
            "n_positive": n1, "n_negative": n0}


def aurocs_many(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores`` ``(m, n)`` for labels ``y`` ``(n,)`` (rank formula,
    ties half; NaN when a class is empty or a row has a NaN)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    n1, n0 = int(y.sum()), int((~y).sum())
    out = np.full(scores.shape[0], np.nan)
    if n1 == 0 or n0 == 0:
        return out
    good = np.isfinite(scores).all(axis=1)
    if good.any():
        r = rankdata(scores[good], axis=1)
        out[good] = (r[:, y].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


def paired_auroc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000,
                            seed: int = 0) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) on the same texts with a stratified percentile bootstrap 95%
    interval (the same resamples for both scorers, so the interval is that of the paired
    difference). Rows where either score is NaN are dropped first."""
    y = np.asarray(y, dtype=bool)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    y, a, b = y[ok], a[ok], b[ok]
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if not len(pos) or not len(neg):
        return {"n": int(len(y)), "difference": None, "ci95": [None, None]}
    diff = float(aurocs_many(y, a[None])[0] - aurocs_many(y, b[None])[0])
    rng = np.random.default_rng(seed)
    yb = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    boots = np.empty(n_boot)
    for i in range(n_boot):
        pick = np.r_[pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))]]
        both = aurocs_many(yb, np.stack([a[pick], b[pick]]))
        boots[i] = both[0] - both[1]
    lo, hi = np.quantile(boots, [0.025, 0.975]) if n_boot else (np.nan, np.nan)
    return {"n": int(len(y)), "difference": diff, "ci95": [_num(lo), _num(hi)],
            "interval": "stratified percentile bootstrap, 95%, the same resamples for both scorers"}


# --------------------------------------------------------------------------- NRC lexicon


def nrc_scores(texts: Sequence[Any], category: str,
               lexicon: Mapping[str, frozenset[str]] | None = None) -> np.ndarray:
    """Share of each text's words (lower-cased letter runs, looked up as written) whose NRC
    entry holds ``category``; 0 for a text without a word (no affect word found), NaN for a
    value that is not a string."""
    if category not in NRC_CATEGORIES:
        raise CheckError(f"NRC category {category!r} is not one of {NRC_CATEGORIES}")
    lex = load_nrc() if lexicon is None else lexicon
    out = np.full(len(texts), np.nan)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            continue
        words = _WORD.findall(t.lower())
        out[i] = (sum(category in lex.get(w, ()) for w in words) / len(words)) if words else 0.0
    return out


# --------------------------------------------------------------------------- label maps


def check_label_map(label_map: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``{label: {"emotions": [...], "nrc": category | None}}``: every emotion under
    one label at most, NRC categories known. Returns it normalised."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for label, spec in dict(label_map or {}).items():
        if not isinstance(spec, Mapping) or "emotions" not in spec:
            raise CheckError(f"scoring.emotion_labels.{label}: give emotions (a list) and optionally nrc")
        emos = [str(e) for e in spec.get("emotions") or []]
        for e in emos:
            if e in seen:
                raise CheckError(f"scoring.emotion_labels: emotion {e!r} is under both {seen[e]!r} and "
                                 f"{label!r}; each emotion is read against one label")
            seen[e] = str(label)
        nrc = spec.get("nrc")
        if nrc is not None and nrc not in NRC_CATEGORIES:
            raise CheckError(f"scoring.emotion_labels.{label}.nrc: {nrc!r} is not an NRC category "
                             f"{NRC_CATEGORIES}")
        out[str(label)] = {"emotions": emos, "nrc": nrc}
    return out


def parse_labels(values: Sequence[Any], separator: str | None = None) -> list[frozenset[str] | None]:
    """Each row's label set: a string (split on ``separator`` when given), a list of strings,
    or None / NaN / empty (no label: the row is left out)."""
    out: list[frozenset[str] | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
            continue
        if isinstance(v, (list, tuple, np.ndarray)):
            items = [str(x).strip() for x in v]
        else:
            v = str(v)
            items = [x.strip() for x in v.split(separator)] if separator else [v.strip()]
        items = [x for x in items if x]
        out.append(frozenset(items) if items else None)
    return out


# --------------------------------------------------------------------------- emotion labels


def emotion_label_check(
    df: pd.DataFrame,
    label_map: Mapping[str, Any],
    *,
    label_column: str = "label",
    separator: str | None = None,
    null_scores: Mapping[str, np.ndarray] | None = None,
    min_positive: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
    text_column: str = "text",
    lexicon: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, Any]:
    """Per mapped emotion: does its score separate the texts labelled with its label from the
    rest? (module docstring).

    Args:
        df: the scores (``emotion_vectors.reading.score``): one column per run emotion, ``label``,
            ``text``.
        label_map: ``{label: {"emotions": [...], "nrc": category | None}}``.
        null_scores: emotion -> ``(K, n_rows)`` the per-text scores of that emotion's
            shuffled-label vectors (any monotone scale: AUROC only ranks), rows as ``df``'s.
        min_positive: an emotion is tested only when its label has at least this many texts
            and the rest too.

    Returns:
        ``rows`` (one dict per mapped emotion present in ``df``, tested or with ``skipped``),
        ``family`` (the mean-AUROC test) and the settings.
    """
    lm = check_label_map(label_map)
    if label_column not in df.columns:
        raise CheckError(f"the emotion-label check needs the label column {label_column!r} "
                         f"(the scores have {list(df.columns)})")
    labels = parse_labels(df[label_column].tolist(), separator)
    emotions = [e for spec in lm.values() for e in spec["emotions"] if e in df.columns]
    if not emotions:
        raise CheckError(f"none of the mapped emotions {[e for s in lm.values() for e in s['emotions']]} "
                         "is among the run's emotions")
    scored = np.isfinite(df[emotions].to_numpy(float)).all(axis=1)
    use = scored & np.array([lab is not None for lab in labels])
    rows_idx = np.flatnonzero(use)
    sub_labels = [labels[i] for i in rows_idx]
    texts = df[text_column].iloc[rows_idx].tolist() if text_column in df.columns else None
    if texts is None and any(spec["nrc"] for spec in lm.values()):
        raise CheckError(f"the NRC baseline needs the texts: column {text_column!r} is absent")
    lex = None
    if any(spec["nrc"] for spec in lm.values()):
        lex = load_nrc() if lexicon is None else lexicon
    K = None
    if null_scores:
        Ks = {np.asarray(v).shape[0] for v in null_scores.values()}
        if len(Ks) != 1:
            raise CheckError(f"the shuffled-label scores have different numbers of shuffles {sorted(Ks)}")
        K = Ks.pop()
    rows: list[dict[str, Any]] = []
    null_auc: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for label, spec in lm.items():
        y = np.array([label in s for s in sub_labels], dtype=bool)
        nrc = nrc_scores(texts, spec["nrc"], lex) if spec["nrc"] else None
        for e in spec["emotions"]:
            if e not in df.columns:
                continue
            row: dict[str, Any] = {"emotion": e, "label": label, "n_positive": int(y.sum()),
                                   "n_negative": int((~y).sum()), "nrc_category": spec["nrc"]}
            if y.sum() < min_positive or (~y).sum() < min_positive:
                rows.append({**row, "skipped": f"fewer than {min_positive} texts with label "
                                               f"{label!r} or without it"})
                continue
            s = df[e].to_numpy(float)[rows_idx]
            mw = mannwhitney_auroc(y, s)
            from emotion_vectors.reading.common import bootstrap_auroc

            ci = bootstrap_auroc(y, s, n_boot=n_boot, seed=seed)["ci95"] if n_boot else [None, None]
            row.update(auroc=mw["auroc"], ci_low=ci[0], ci_high=ci[1],
                       p_mannwhitney=mw["p_mannwhitney"], skipped=None)
            if nrc is not None:
                nm = mannwhitney_auroc(y, nrc)
                row.update(nrc_auroc=nm["auroc"], nrc_p_mannwhitney=nm["p_mannwhitney"],
                           nrc_share_with_word=float(np.mean(nrc > 0)))
            if K is not None:
                ns = np.asarray(null_scores[e], dtype=float)[:, rows_idx]
                na = aurocs_many(y, ns)
                null_auc[e] = na
                row.update(n_shuffles=int(K), p_shuffled=mc_p(mw["auroc"], na),
                           shuffled_auroc_mean=_num(np.nanmean(na)) if np.isfinite(na).any() else None,
                           shuffled_auroc_p95=_num(np.nanquantile(na, 0.95)) if np.isfinite(na).any() else None)
            ys[e] = y
            rows.append(row)
    tested = [r for r in rows if not r.get("skipped")]
    if tested:
        for key, src in (("p_mannwhitney_holm", "p_mannwhitney"), ("p_shuffled_holm", "p_shuffled")):
            p = np.array([r.get(src) if r.get(src) is not None else np.nan for r in tested], float)
            if np.isfinite(p).any():
                for r, a in zip(tested, holm(p)):
                    r[key] = _num(a)
    family = _family(df, tested, ys, rows_idx, null_auc, K, n_boot=n_boot, seed=seed)
    return {"label_column": label_column, "separator": separator, "label_map": lm,
            "n_texts": int(len(rows_idx)), "n_excluded_no_label": int((scored & ~use).sum()),
            "n_excluded_not_scored": int((~scored).sum()), "min_positive": int(min_positive),
            "n_shuffles": K, "n_boot": int(n_boot), "seed": int(seed),
            "nrc_source": NRC_SOURCE if lex is not None else None, "rows": rows, "family": family}


def _family(df, tested, ys, rows_idx, null_auc, K, *, n_boot, seed) -> dict[str, Any]:
    """Mean AUROC over the tested emotions, its text bootstrap interval and its shuffled null."""
    if not tested:
        return {"n_emotions": 0, "mean_auroc": None, "ci95": [None, None], "p_shuffled": None}
    emos = [r["emotion"] for r in tested]
    mean = float(np.mean([r["auroc"] for r in tested]))
    S = np.stack([df[e].to_numpy(float)[rows_idx] for e in emos])  # (m, n)
    Y = np.stack([ys[e] for e in emos])
    rng = np.random.default_rng(seed)
    n = S.shape[1]
    boots = np.full(n_boot, np.nan)
    for b in range(n_boot):
        pick = rng.integers(0, n, n)
        vals = [aurocs_many(Y[j, pick], S[j, pick][None])[0] for j in range(len(emos))]
        if np.isfinite(vals).all():
            boots[b] = float(np.mean(vals))
    boots = boots[np.isfinite(boots)]
    ci = [_num(v) for v in np.quantile(boots, [0.025, 0.975])] if boots.size else [None, None]
    out = {"n_emotions": len(emos), "emotions": emos, "mean_auroc": mean, "ci95": ci,
           "interval": "percentile bootstrap over texts, 95%",
           "nrc_mean_auroc": _num(np.mean([r["nrc_auroc"] for r in tested if r.get("nrc_auroc") is not None]))
           if any(r.get("nrc_auroc") is not None for r in tested) else None,
           "n_mannwhitney_holm_below_alpha": int(sum((r.get("p_mannwhitney_holm") or 1) < 0.05 for r in tested)),
           "p_shuffled": None, "null_mean_auroc": None}
    if K is not None and all(e in null_auc for e in emos):
        null_means = np.mean(np.stack([null_auc[e] for e in emos]), axis=0)  # (K,)
        out.update(p_shuffled=mc_p(mean, null_means), null_mean_auroc=[_num(v) for v in null_means],
                   n_shuffles=int(K))
    return out


# --------------------------------------------------------------------------- agreement


def shuffled_means(raw: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Mean score from the neutral dialogues in corpus-sd units, as ``corpus_report``'s
    ranking: ``(mean_i raw[i] - neutral) / sd_i raw[i]`` for raw projections ``(..., n)`` of
    the scored texts and the neutral projections ``(...)``."""
    raw = np.asarray(raw, dtype=float)
    sd = raw.std(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, (raw.mean(axis=-1) - np.asarray(neutral, float)) / np.where(sd > 0, sd, 1), np.nan)


def corpora_agreement(real: Mapping[str, np.ndarray], null: Mapping[str, np.ndarray] | None = None,
                      *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Spearman agreement of every pair of corpora's emotion means, against the same
    statistic for each shuffle of the vectors.

    Args:
        real: corpus -> ``(E,)`` mean score per emotion (same emotion order for all).
        null: corpus -> ``(K, E)`` the same for each shuffle's vectors (or None).

    Returns ``pairs`` (each with ``spearman``, its bootstrap-over-emotions interval, the
    naive scipy p that ignores the shared offset, the K null values and ``p_shuffled``) and
    ``family``: the mean Spearman over pairs with its own null (one exact test).
    """
    from scipy.stats import rankdata

    from emotion_vectors.analysis.stats import _rowwise_pearson, correlate

    corpora = list(real)
    pairs = []
    K = None
    if null:
        Ks = {np.asarray(null[c]).shape[0] for c in corpora if c in null}
        if len(Ks) > 1 or any(c not in null for c in corpora):
            raise CheckError("every corpus needs the same number of shuffled-label means")
        K = Ks.pop() if Ks else None
    for i, a in enumerate(corpora):
        for b in corpora[i + 1:]:
            x, y = np.asarray(real[a], float), np.asarray(real[b], float)
            c = correlate(x, y, method="spearman", n_bootstrap=n_boot, seed=seed)
            pr: dict[str, Any] = {"corpus_a": a, "corpus_b": b, "n_emotions": int(x.size),
                                  "spearman": _num(c.r), "ci_low": _num(c.ci_low), "ci_high": _num(c.ci_high),
                                  "p_naive": _num(c.p), "p_shuffled": None, "null": None}
            if K is not None:
                na, nb = np.asarray(null[a], float), np.asarray(null[b], float)
                ok = np.isfinite(na).all(axis=1) & np.isfinite(nb).all(axis=1)
                nulls = np.full(K, np.nan)
                if ok.any():  # Spearman = Pearson of the ranks, row by row
                    nulls[ok] = _rowwise_pearson(rankdata(na[ok], axis=1), rankdata(nb[ok], axis=1))
                pr.update(null=[_num(v) for v in nulls], p_shuffled=mc_p(c.r, nulls),
                          null_median=_num(np.nanmedian(nulls)) if np.isfinite(nulls).any() else None)
            pairs.append(pr)
    fam: dict[str, Any] = {"n_pairs": len(pairs), "mean_spearman": None, "p_shuffled": None,
                           "n_shuffles": K}
    if pairs:
        fam["mean_spearman"] = _num(np.mean([p["spearman"] for p in pairs]))
        if K is not None:
            null_mean = np.mean(np.array([p["null"] for p in pairs], dtype=float), axis=0)
            fam.update(null=[_num(v) for v in null_mean], p_shuffled=mc_p(fam["mean_spearman"], null_mean))
    return {"pairs": pairs, "family": fam}


# --------------------------------------------------------------------------- claims

AGREEMENT_TEST = ("Spearman correlation over emotions between two corpora's mean scores (from the "
                  "neutral dialogues, corpus-sd units); Monte-Carlo p = (1 + #{shuffles >= observed}) "
                  "/ (1 + K), one-sided")
AGREEMENT_NULL = ("the same statistic with each set of shuffled-label vectors (emotion labels "
                  "permuted within topic), which carry the same genre/length/window offset of the "
                  "corpora from the neutral dialogues")


def agreement_claims(result: Mapping[str, Any], *, figure: str | None = None) -> list[Claim]:
    """``scoring.corpora_agreement`` (the mean over pairs; the pair's own test when there is one
    pair) and, with several pairs, ``scoring.corpora_agreement.<a>.<b>`` (Holm over pairs)."""
    pairs, fam = result["pairs"], result["family"]
    K = fam.get("n_shuffles")
    base_note = ("the agreement itself is expected from the shared offset of short human text from "
                 "the neutral dialogues (any directions agree); the test asks whether the emotion "
                 "labels add to it")
    if not pairs:
        return [make_claim("scoring.corpora_agreement", STAGE,
                           "the emotion vectors rank emotions alike across corpora beyond what "
                           "label-free vectors do", test=AGREEMENT_TEST, null=AGREEMENT_NULL,
                           statistic=None, p=None,
                           note="fewer than two corpora: nothing to compare")]
    note = (base_note if K is not None else base_note + "; no shuffled-label vectors: nothing to test against") + "."
    one = len(pairs) == 1
    fam_claim = make_claim(
        "scoring.corpora_agreement", STAGE,
        ("the emotion vectors rank emotions alike across corpora beyond what label-free vectors do"
         + (f" ({pairs[0]['corpus_a']} vs {pairs[0]['corpus_b']})" if one else f" (mean over {len(pairs)} pairs)")),
        test=AGREEMENT_TEST + ("" if one else "; statistic = mean Spearman over the pairs"),
        null=AGREEMENT_NULL, statistic=fam["mean_spearman"], p=fam.get("p_shuffled"), n_null=K,
        interval=[pairs[0]["ci_low"], pairs[0]["ci_high"]] if one else None,
        interval_of="Spearman, 95% percentile bootstrap over emotions" if one else "",
        figure=figure, note=note,
        extra={"null_median": pairs[0].get("null_median") if one else _num(np.nanmedian(fam["null"])) if fam.get("null") else None,
               "p_naive_ignoring_offset": pairs[0]["p_naive"] if one else None,
               "n_emotions": pairs[0]["n_emotions"], "pairs": [(p["corpus_a"], p["corpus_b"]) for p in pairs]})
    out = [fam_claim]
    if not one:
        per = [make_claim(f"scoring.corpora_agreement.{p['corpus_a']}.{p['corpus_b']}", STAGE,
                          f"{p['corpus_a']} and {p['corpus_b']}: the emotion vectors rank emotions alike "
                          "beyond what label-free vectors do", test=AGREEMENT_TEST, null=AGREEMENT_NULL,
                          statistic=p["spearman"], p=p.get("p_shuffled"), n_null=K,
                          interval=[p["ci_low"], p["ci_high"]],
                          interval_of="Spearman, 95% percentile bootstrap over emotions", note=note,
                          extra={"null_median": p.get("null_median"), "p_naive_ignoring_offset": p["p_naive"]})
               for p in pairs]
        out += _holm_family(per)
    return out


def valence_auroc_claim(corpus: str, check: Mapping[str, Any], *, figure: str | None = None) -> Claim:
    """``scoring.<corpus>.valence_auroc`` from a labelled check (``score.labelled_check`` with
    ``valence_direction_check`` added)."""
    v = check["scorers"]["valence"]
    same = check.get("same_texts") or {}
    vcheck = check.get("valence_direction_check") or {}
    extra = {"n_positive": check.get("n_positive"), "n_negative": check.get("n_negative"),
             "same_texts": same, "valence_direction_check": vcheck,
             "p_shuffled": check.get("p_shuffled"), "shuffled_auroc_p95": check.get("shuffled_auroc_p95")}
    note = ""
    p = v.get("p_mannwhitney")
    if not vcheck:
        p, note = None, "the valence direction was not checked against human ratings: not testable"
    elif not vcheck.get("is_valence"):
        p, note = None, vcheck.get("note", "PC1 is not shown to be valence for this run")
    vader = (same.get("scorers") or {}).get("vader") or {}
    if vader.get("auroc") is not None:
        note = (note + "; " if note else "") + (
            f"on the same {same.get('n')} texts VADER reaches {vader['auroc']:.3f}")
    return make_claim(
        f"scoring.{corpus}.valence_auroc", STAGE,
        f"the valence readout scores {corpus}' positive texts above the negative ones",
        test="AUROC of the valence score, positive vs negative; one-sided Mann-Whitney U p",
        null="labels exchangeable among the texts (Mann-Whitney); gated by PC1 being valence for "
             "this run (readout.check_valence_direction)",
        statistic=v.get("auroc"), p=p, interval=v.get("ci95"),
        interval_of="AUROC, stratified percentile bootstrap 95%", figure=figure, note=note, extra=extra)


def emotion_claims(corpus: str, check: Mapping[str, Any], *, figure: str | None = None) -> list[Claim]:
    """``scoring.<corpus>.emotion_auroc`` (family: mean AUROC vs the shuffles) and one claim
    per tested emotion ``scoring.<corpus>.emotion_auroc.<emotion>`` (vs its own shuffles, Holm)."""
    fam = check["family"]
    K = check.get("n_shuffles")
    tested = [r for r in check["rows"] if not r.get("skipped")]
    no_null = "no shuffled-label vectors: nothing to test against" if K is None else ""
    survive = sum(1 for r in tested if (r.get("p_shuffled_holm") or 1.0) < 0.05)
    fam_note = "; ".join(x for x in (
        no_null,
        f"{survive} of {len(tested)} emotions beat their own shuffles after Holm" if tested and K else "",
        (f"NRC lexicon mean AUROC on the same texts {fam['nrc_mean_auroc']:.3f}"
         if fam.get("nrc_mean_auroc") is not None else "")) if x)
    if not tested:
        fam_note = "no mapped emotion has enough labelled texts"
    fam_note = fam_note + "." if fam_note else fam_note
    out = [make_claim(
        f"scoring.{corpus}.emotion_auroc", STAGE,
        f"the emotion vectors score {corpus}' texts labelled with their emotion above the rest, "
        "beyond what label-free vectors do",
        test="mean over the mapped emotions of the AUROC of the emotion's score, own label vs the "
             "rest; Monte-Carlo p over the shuffles, one-sided",
        null="the same mean with each shuffle's shuffled-label vectors (emotion labels permuted "
             "within topic)",
        statistic=fam.get("mean_auroc"), p=fam.get("p_shuffled") if tested else None,
        n_null=K if tested else None, interval=fam.get("ci95") if tested else None,
        interval_of="mean AUROC, percentile bootstrap over texts, 95%", figure=figure, note=fam_note,
        extra={"n_emotions": len(tested), "n_surviving_holm": survive if K else None,
               "nrc_mean_auroc": fam.get("nrc_mean_auroc"),
               "n_mannwhitney_holm_below_alpha": fam.get("n_mannwhitney_holm_below_alpha"),
               "n_texts": check.get("n_texts")})]
    m = len(tested)
    for r in tested:
        nrc = (f"NRC '{r['nrc_category']}' AUROC {r['nrc_auroc']:.3f} on the same texts"
               if r.get("nrc_auroc") is not None else "no NRC category for this label")
        note = "; ".join(x for x in (no_null, nrc, f"Mann-Whitney p {r['p_mannwhitney']:.3g} "
                                     f"(Holm {r.get('p_mannwhitney_holm', float('nan')):.3g}) against "
                                     "exchangeable labels, not emotion-specific") if x) + "."
        out.append(make_claim(
            f"scoring.{corpus}.emotion_auroc.{r['emotion']}", STAGE,
            f"the {r['emotion']} vector scores texts labelled {r['label']!r} above the rest, beyond "
            "its shuffled-label vectors",
            test="AUROC of the emotion's score, own label vs the rest; Monte-Carlo p over the "
                 "shuffles, one-sided",
            null=f"the AUROC of the same emotion's shuffled-label vectors (K = {K})",
            statistic=r["auroc"], p=r.get("p_shuffled"),
            p_adjusted=r.get("p_shuffled_holm"), correction=f"Holm over {m} emotions" if m > 1 else "none (single test)",
            family=m, n_null=K, interval=[r["ci_low"], r["ci_high"]],
            interval_of="AUROC, stratified percentile bootstrap 95%", figure=figure, note=note,
            extra={k: r.get(k) for k in ("label", "n_positive", "n_negative", "p_mannwhitney",
                                         "p_mannwhitney_holm", "nrc_category", "nrc_auroc",
                                         "shuffled_auroc_mean", "shuffled_auroc_p95")}))
    return out


def _holm_family(claims: list[Claim]) -> list[Claim]:
    from emotion_vectors.core.claims import family_claims

    return family_claims(claims, method="holm")


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


__all__ = ["AGREEMENT_NULL", "AGREEMENT_TEST", "CheckError",
           "agreement_claims", "aurocs_many", "check_label_map", "corpora_agreement",
           "emotion_claims", "emotion_label_check", "mannwhitney_auroc",
           "nrc_scores", "paired_auroc_difference", "parse_labels", "shuffled_means",
           "valence_auroc_claim"]
