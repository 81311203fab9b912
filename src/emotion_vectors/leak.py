"""Leak filter: does a text name its emotion?

The study's writer must never use the emotion word. A naive substring test is wrong both ways:
it flags "hopefully" in a story about *hope* and "madness" in one about being *mad* (different
words), yet misses "Afraid", "grief stricken" or "at   ease". The rule here:

- whole words only, case-insensitive, any Unicode letters (a match may not touch a letter or
  digit on either side; punctuation, hyphens and apostrophes are boundaries, so "Hope's" and
  "hope-filled" match *hope*);
- the word's simple inflections: -s/-es, -ed/-d, -ing, -er/-est, -ly (with e-drop, y -> i and
  consonant doubling); a word that is itself an -ed/-ing form (bored, loving, worried) also
  leaks through its base verb and that verb's inflections (bore, boring; love, loves);
- derivations that make a different word are *not* inflections: "hopefully" does not leak
  *hope* (it does leak *hopeful*), "madness" does not leak *mad*;
- multiword and hyphenated emotions ("at ease", "worn out", "grief-stricken") match with any
  run of spaces, line breaks or hyphens between their parts, or none for hyphenated ones.

Synonyms are beyond a word filter; the prompt forbids them and the report shows samples.
"""

from __future__ import annotations

import re
from functools import lru_cache

_VOWELS = set("aeiou")


def _doubles_final_consonant(word: str) -> bool:
    """Words ending consonant-vowel-consonant may double it (sad -> sadder, upset -> upsetting).

    Applied whatever the stress (over-generation is harmless, see ``inflections``)."""
    return (
        len(word) >= 3
        and word[-1] not in _VOWELS | {"w", "x", "y"}
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    )


def inflections(word: str) -> set[str]:
    """A single word's simple inflected forms, the word included (lower case).

    Over-generation is harmless (a non-word never occurs in text); missing a real form is not.
    """
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "'s"}
    stems = {w}
    if w.endswith("e"):
        stems.add(w[:-1])
    if w.endswith("y") and len(w) > 2 and w[-2] not in _VOWELS:
        stems.add(w[:-1] + "i")
        forms.add(w[:-1] + "ies")
    if _doubles_final_consonant(w):
        stems.add(w + w[-1])
    for stem in stems:
        forms |= {stem + "ed", stem + "d", stem + "ing", stem + "er", stem + "est", stem + "ly"}
    if w.endswith("le"):
        forms.add(w[:-1] + "y")  # gentle -> gently
    if w.endswith("ic"):
        forms.add(w + "ally")
    return forms


def _base_verbs(word: str) -> set[str]:
    """Base verbs a participle-like emotion word comes from: bored -> bore, worried -> worry."""
    w = word.lower()
    bases: set[str] = set()
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            stem = w[: -len(suffix)]
            bases |= {stem, stem + "e"}
            if len(stem) >= 2 and stem[-1] == stem[-2]:
                bases.add(stem[:-1])  # upsetting -> upset
            if suffix == "ed" and stem.endswith("i"):
                bases.add(stem[:-1] + "y")  # worried -> worry
    return bases


def word_forms(emotion: str) -> set[str]:
    """Every surface form (lower case) that counts as naming ``emotion``."""
    parts = re.split(r"[\s\-]+", emotion.strip().lower())
    if len(parts) > 1:
        return {" ".join(parts)}
    forms = inflections(parts[0])
    for base in _base_verbs(parts[0]):
        forms |= inflections(base)
    return forms


def _form_pattern(form: str, hyphenated: bool) -> str:
    parts = form.split(" ")
    if len(parts) == 1:
        return re.escape(form).replace("'", "['\u2019]")
    sep = r"[\s\-\u2010\u2011]*" if hyphenated else r"[\s\-\u2010\u2011]+"
    return sep.join(re.escape(p) for p in parts)


@lru_cache(maxsize=4096)
def leak_pattern(emotion: str) -> re.Pattern[str]:
    """Compiled case-insensitive whole-word pattern for every form of ``emotion``."""
    hyphenated = "-" in emotion
    forms = sorted(word_forms(emotion), key=len, reverse=True)
    body = "|".join(_form_pattern(f, hyphenated) for f in forms)
    return re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])", re.IGNORECASE)


def find_leaks(text: str, emotion: str) -> list[str]:
    """The forms of ``emotion`` that ``text`` uses, as written (empty list: no leak)."""
    return [m.group(0) for m in leak_pattern(emotion).finditer(text)]


def screen(text: str, emotions: list[str]) -> dict[str, list[str]]:
    """For a neutral text: which of ``emotions`` it names, with the forms found."""
    hits = {}
    for emotion in emotions:
        found = find_leaks(text, emotion)
        if found:
            hits[emotion] = found
    return hits
