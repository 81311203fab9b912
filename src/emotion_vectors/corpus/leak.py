"""Leak filter: does a text name its emotion?

The study's writer must never use the emotion word (stories that do are rejected and
regenerated), and the neutral dialogues are screened against every emotion word (hits are
flagged). A naive substring test is wrong both ways: it flags "hopefully" in a story about *hope*
and "madness" in one about being *mad* (different words), yet misses "Afraid", "grief stricken"
or "at   ease". The rule here, in three parts.

**1. Which forms name an emotion** (``word_forms``):

- the word itself and its inflections: -s/-es, -ed/-d, -ing, -er/-est, -ly (with e-drop,
  y -> i, consonant doubling, panic -> panicked), and the possessive;
- a word that is itself a participle (bored, loving, worried, panicked) is a form of a verb, and
  that verb's forms name the same feeling: bore/bores/boring, love/loves/lovingly,
  worry/worries/worryingly, panic/panics/panicking. Only verb forms are made from the verb (no
  -er/-est/-ly on it: "lover", "lovely", "offender", "thriller" are other words); an -ing
  participle also gives its -ly adverb (surprisingly, alarmingly);
- irregular forms, from a table checked against all 171 study emotions (``IRREGULAR``):
  *shaken* <- shake/shakes/shook/shaking; *worn out* <- wear/wears/wore/wearing out, also with
  a pronoun inside ("wore him out"); *heartbroken* <- heartbreaking; spelling variants
  (awe-struck, dumb-struck, heart-broken, sceptical; -ise for -ize: energised);
- a hyphenated emotion inflects its last part ("self-consciously");
- **derivations are not forms**: words made with a derivational suffix or another stem name the
  same concept in another part of speech (anger for *angry*, fear for *afraid*, calmness,
  boredom, hopefully for *hope*, scary, panicky, lover). They are synonym-level: the prompt
  forbids "the word or any direct synonym", the filter does not police them (where would it stop:
  fearful, fearsome, fearless?). A derivation that is itself a study emotion is caught under its
  own entry ("hopefully" leaks *hopeful*).

**2. Where a form is found**: whole words only, case-insensitive, any Unicode letters (a match
may not touch a letter or digit on either side; punctuation, hyphens, underscores and
apostrophes are boundaries, so "Hope's" and "hope-filled" match *hope*). Apostrophes may be
', \u2019 or the modifier letter \u02bc; multiword emotions match with any run of spaces, line
breaks, hyphens or en dashes between their parts ("worn\u2013out"), hyphenated ones also with
none ("griefstricken").

**3. Other senses are not leaks** (``OTHER_WORDS``, ``SENSES``): a curated table, each entry
with its reason and an example the tests run, of spellings that are a *different word* than the
emotion, found by going through the forms of all 171 study emotions. Three kinds:

- forms that are only ever another word, dropped outright: "patients", "contents", "kinds",
  "safes", "alerts", "pleas" (plural nouns; the adjective has no plural);
- a noun homograph after a determiner ("the patient said", "the content of the file", "what
  kind of", "the safe was open", "the past tense"), and lexicalised terms in which the word
  describes nobody's feeling ("alarm clock", "nervous system", "case-sensitive", "lazy
  loading", "happy path", "stress test", "shook his head", "fulfil the order");
- base forms that are mostly a noun for a thing or a function word count only in a clearly
  verbal use, mainly with a personal object ("it tires him", "to please her", "she never tires
  of it", "what a bore"): please (the politeness word), tire(s) (wheels), bore (past tense of
  *bear*), alarms, trap(s), puzzle(s), rattle(s), trouble(s). The participles (tired, tiring,
  pleasing, boring, alarming, troubling) always count, and so does "alarm" outside device
  contexts ("in alarm", "to her alarm").

Words used as code identifiers ("response.content", "alert(", "is_patient") are not prose and
do not count. Not in the table, and so flagged, are *senses of the same word* that a word filter
cannot tell apart: physical "hurt", objective "safe", "stuck" or "vulnerable", a "bitter" taste,
"mad" as crazy, "sorry" as an apology, "hope" in "I hope this helps". For stories a false flag
costs one regeneration while a miss puts the emotion's own token into the corpus, so the filter
errs towards flagging. Synonyms are beyond a word filter; the prompt forbids them and the report
shows samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_VOWELS = set("aeiou")

# Apostrophes accepted in possessives. U+02BC (modifier letter apostrophe) is a *letter* to
# Unicode, so texts are matched with it replaced by U+2019 (same length: spans are unchanged).
_APOSTROPHES = "'\u2019"
_NORMALISE = str.maketrans({"\u02bc": "\u2019"})
# Joints of multiword and hyphenated emotions: hyphen-minus, hyphen, non-breaking hyphen,
# figure dash, en dash (an em dash separates clauses, not compound parts).
_DASHES = r"\-\u2010\u2011\u2012\u2013"
_SEP = rf"[\s{_DASHES}]+"
_SEP_OPT = rf"[\s{_DASHES}]*"


def _doubles_final_consonant(word: str) -> bool:
    """Words ending consonant-vowel-consonant may double it (sad -> sadder, upset -> upsetting).

    Applied whatever the stress (over-generation is harmless, see ``inflections``)."""
    return (
        len(word) >= 3
        and word[-1] not in _VOWELS | {"w", "x", "y"}
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    )


def _syllables(word: str) -> int:
    return len(re.findall(r"[aeiouy]+", word))


def _stems(w: str) -> set[str]:
    """Stems that take -ed/-ing/-er/-est: hope -> hop, worry -> worri, sad -> sadd, panic ->
    panick."""
    stems = {w}
    if w.endswith("e"):
        stems.add(w[:-1])
    if w.endswith("y") and len(w) > 2 and w[-2] not in _VOWELS:
        stems.add(w[:-1] + "i")
    if _doubles_final_consonant(w):
        stems.add(w + w[-1])
    if w.endswith("ic"):
        stems.add(w + "k")
    return stems


def _plurals(w: str) -> set[str]:
    forms = {w + "s", w + "es"}
    if w.endswith("y") and len(w) > 2 and w[-2] not in _VOWELS:
        forms.add(w[:-1] + "ies")
    return forms


def inflections(word: str) -> set[str]:
    """A single word's simple inflected forms, the word included (lower case).

    Over-generation is harmless (a non-word never occurs in text); missing a real form is not.
    Where an over-generated form is a real, different word ("patients") it is listed in
    ``OTHER_WORDS``.
    """
    w = word.lower()
    forms = {w, w + "'s"} | _plurals(w)
    for stem in _stems(w):
        if stem == w + "k":  # panic -> panicked, panicking; not "panicker"
            forms |= {stem + "ed", stem + "ing"}
            continue
        forms |= {stem + "ed", stem + "ing", stem + "er", stem + "est", stem + "ly"}
    # (-e words: the e-drop stem gives "hoped", "hoping"; "hope" + "d" needs no rule of its own.)
    if w.endswith("le"):
        forms.add(w[:-1] + "y")  # gentle -> gently
    if w.endswith("ic"):
        forms.add(w + "ally")
    return forms


def verb_forms(verb: str) -> set[str]:
    """A verb's forms: the verb, its -s, -ed and -ing forms and the -ing form's -ly adverb.

    No -er/-est/-ly on the verb itself: "lover", "lovely", "thriller" are other words."""
    v = verb.lower()
    forms = {v, v + "'s"} | _plurals(v)
    for stem in _stems(v):  # "love" -> "lov" + "ed": the e-drop stem makes "loved"
        forms |= {stem + "ed", stem + "ing", stem + "ingly"}
    return forms


def _base_verbs(word: str) -> set[str]:
    """Base verbs a participle-like emotion word comes from: bored -> bore, worried -> worry.

    Candidates are spelling guesses (over-generation is harmless, a non-word never occurs), with
    two rules that keep real other words out: a one-syllable consonant-vowel-consonant stem
    without a doubled consonant takes an -e (scared -> scare, never "scar", which would make
    "scarred"), and -icked comes from an -ic verb of 5 letters or more (panicked -> panic; not
    pricked -> "pric", which would make "prices" and "priced").
    """
    w = word.lower()
    bases: set[str] = set()
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            stem = w[: -len(suffix)]
            bases.add(stem + "e")
            if not (_syllables(stem) == 1 and _doubles_final_consonant(stem)):
                bases.add(stem)
            if stem[-1] == stem[-2]:  # (the stem has 3 letters at least)
                bases.add(stem[:-1])  # upsetting -> upset
            if suffix == "ed" and stem.endswith("i"):
                bases.add(stem[:-1] + "y")  # worried -> worry
            if stem.endswith("ick") and len(stem) > 5:  # the shortest -ic verbs: panic, mimic
                bases.add(stem[:-1])  # panicked -> panic; not trick -> "tric", prick -> "pric"
    return bases


# Irregular forms of study emotions (config/emotions.txt checked word by word). Parts joined by
# "-" match with a hyphen, spaces or nothing between them; by " ", with spaces or a hyphen.
# Not listed on purpose: "stuck" <- stick (a stick, stick to a plan: other words dominate);
# "struck dumb", "stricken with grief", "broke her heart" (reordered phrases: synonym-level).
IRREGULAR: dict[str, tuple[str, ...]] = {
    "shaken": ("shake", "shakes", "shook", "shaking", "shakingly"),
    "worn out": ("wear out", "wears out", "wore out", "wearing out"),
    "heartbroken": ("heart-broken", "heartbreaking", "heartbreakingly"),
    "skeptical": ("sceptical", "sceptically"),
    "awestruck": ("awe-struck",),
    "dumbstruck": ("dumb-struck",),
}
# Phrasal verbs whose object may sit inside them ("wore him out", "wearing everyone out").
_PHRASAL_VERBS = {"wear", "wears", "wore", "wearing", "worn"}
_PERSON = (
    r"(?:me|you|him|her|us|them|myself|yourself|himself|herself|ourselves|yourselves"
    r"|themselves|oneself|everyone|everybody|anyone|anybody|someone|somebody|people)"
)

# Forms that are only ever another word (the adjective has no plural or possessive of its own),
# dropped from ``word_forms``; the reason is the other word.
OTHER_WORDS: dict[str, dict[str, str]] = {
    "patient": {"patients": "plural noun (people in care)", "patient's": "noun possessive"},
    "content": {"contents": "plural noun (what something holds)", "content's": "noun possessive"},
    "kind": {"kinds": "plural noun (sorts)", "kind's": "noun possessive"},
    "safe": {"safes": "plural noun (strongboxes)", "safe's": "noun possessive"},
    "alert": {
        "alerts": "plural noun (notifications) or the verb 'to warn'",
        "alerting": "the verb 'to warn'",
    },
    "dependent": {"dependents": "plural noun (people one supports)"},
    "hostile": {"hostiles": "plural noun (enemy fighters)"},
    "bitter": {"bitters": "plural noun (cocktail flavouring)"},
    "pleased": {"pleas": "plural of plea"},
}


@dataclass(frozen=True)
class Sense:
    """A context in which a form of ``emotion`` is another word, or the only one where it leaks.

    ``forms`` is a regex matched against the whole form as found (lower case, apostrophes as
    "'", runs of spaces and dashes as one space); ``before`` is searched at the end of the text
    before the form, ``after`` matched at the start of the text after it (case-insensitive).
    Kind "other": the form is another word when every given context matches. Kind "only": the
    form names the emotion only where one of its "only" entries matches. ``example`` is a text
    the entry decides (tested: no leak for "other", a leak for "only").
    """

    emotion: str
    kind: str
    forms: str
    reason: str
    example: str
    before: str | None = None
    after: str | None = None


def _any(words: str) -> str:
    """``"a b? c"`` -> ``(?:a|b?|c)``: a word list (with regex suffixes) as one alternation."""
    return "(?:" + "|".join(words.split()) + ")"


def _mod(words: str) -> str:
    """``before`` context: the form directly follows one of ``words`` (space or hyphen)."""
    return rf"\b{_any(words)}[\s\-]+$"


def _head(words: str, gap: int = 0) -> str:
    """``after`` context: one of ``words`` follows (space or hyphen), ``gap`` words between."""
    return rf"[\s\-]+(?:\w+\s+){{0,{gap}}}{_any(words)}\b"


_DETERMINERS = (
    "a an the this that these those my your his her its our their each every another one any "
    "some no which what whose same first next new last"
)
_DET = rf"(?:\b{_any(_DETERMINERS)}|\w['\u2019]s)"  # incl. a possessive ("the car's")
_AFTER_DET = rf"{_DET}\s+$"
# After a noun, not an adjective: the end of a clause, a preposition, a relative, or a verb.
_NOUN_END = (
    r"(?:\s*(?:[.;:!?)\]\"\u201d]|$)|\s+"
    + _any(
        "of in on at for from to with by about into over under who whom whose that which is was "
        "are were has had have will would can could should may might must does did said says "
        "asked asks needs needed wants seems seemed looks felt feels got gets came went took "
        "takes sat lay lies \\w+ed"
    )
    + r"\b)"
)
_OBJECT = rf"\s+{_PERSON}\b"
_ARTICLE = (
    r"(?:(?:the|a|an|this|that|these|those|its|their|his|her|my|your|our|all|every|each|any"
    r"|some)\s+)?"
)


def _other(emotion, forms, reason, example, before=None, after=None) -> Sense:
    return Sense(emotion, "other", forms, reason, example, before, after)


def _noun(emotion, forms, reason, example) -> Sense:
    """The form is a noun homograph when a determiner precedes it and no noun follows."""
    return _other(emotion, forms, reason, example, _AFTER_DET, _NOUN_END)


def _verb_only(emotion, forms, reason, example) -> Sense:
    """The form counts only as a verb with a personal object ("it tires him")."""
    return Sense(emotion, "only", forms, reason, example, None, _OBJECT)


SENSES: list[Sense] = [
    # --- The adjective's noun homographs and compounds. ---
    _noun("patient", "patient", "noun: a person in care", "The patient said no."),
    _other("patient", "patient", "noun compound", "Update the patient records.", after=_head(
        "care records? files? rooms? charts? notes portal intake data privacy safety information "
        "histor(?:y|ies) advocates? zero lists? loads? ids? numbers? satisfaction visits? "
        "outcomes? education experience populations? consent flow names? registration transport")),
    _noun("content", "content", "noun: what a text or file holds", "The content is short."),
    _other("content", "content", "noun: 'content of' (the adjective takes 'with')",
           "Check the content of the file.", after=r"\s+of\b"),
    _other("content", "content", "noun compound", "Set the content type.", after=_head(
        "creators? creation dispositions? transfer ids? moderation marketing strategy management "
        "types? warnings? filter(?:s|ing)? polic(?:y|ies) calendar length areas? blocks? delivery "
        "security negotiation editors? writers? teams? plans? pillars? ideas? library managers? "
        "models? hash encoding headers? body items? pages? updates? review audit inventory "
        "generation ownership rights licen[cs]e")),
    _other("content", "content", "noun after a medium or material", "Add web content.", _mod(
        "web online digital video audio media user user-generated premium paid free original "
        "fresh written visual interactive educational sponsored branded marketing page site "
        "website blog file email message fat sugar salt water moisture alcohol protein "
        "fib(?:er|re) caffeine carbon mineral nutritional nutrient calorie iron oil sodium high "
        "low main static dynamic explicit adult harmful inappropriate duplicate generated local "
        "remote text html json xml course lesson training entire whole full raw actual binary "
        "encoded decoded returned")),
    _noun("kind", "kind", "noun: a sort", "This kind is better."),
    _other("kind", "kind", "noun: 'kind of' (the hedge 'kind of slow'); not 'kind of you'",
           "It was kind of slow.", after=rf"\s+of\b(?!{_OBJECT})"),
    _other("kind", "kind", "noun: 'what kind,'", "Of any kind, large or small.",
           r"\b(?:what|which|any)\s+$", r"\s*,"),
    _other("kind", "kind", "noun: 'in kind'", "They paid in kind.", r"\bin\s+$",
           r"\s*(?:[.,;:!?)]|$)"),
    _other("kind", "kind", "letter formula", "Kind regards, Ann", after=r"\s+regards\b"),
    _noun("safe", "safe", "noun: a strongbox", "The safe was open."),
    _other("safe", "safe", "technical term", "Use safe mode.", after=_head(
        "mode harbou?r deposit search word list")),
    _other("safe", "safe", "technical term", "The code is thread safe.", r"\b" + _any(
        "type thread fail memory null crash concurrency async signal exception unicode url "
        "filesystem html json microwave dishwasher oven freezer food") + r"\s+$"),
    *[
        _other(emotion, emotion, "second part of a compound: 'with respect to', not a feeling",
               example, r"\w[\-\u2010\u2011]$")
        for emotion, example in (
            ("safe", "A type-safe API."),
            ("sensitive", "Matching is case-sensitive."),
            ("dependent", "It is platform-dependent."),
            ("inspired", "A Bauhaus-inspired chair."),
        )
    ],
    _noun("alert", "alert", "noun: a notification", "An alert was raised."),
    _other("alert", "alert", "the verb 'to warn'", "Call to alert the team.",
           r"\b(?:to|will|would|can|could|should|must|may|might|please)\s+$"),
    _other("alert", "alert", "noun compound", "Set up an email alert.", _mod(
        "email e-mail push security weather price system error amber fraud text sms news "
        "monitoring pager severity")),
    _other("alert", "alert", "noun compound", "Close the alert box.", after=_head(
        "box(?:es)? dialogs? dialogue messages? levels? thresholds? rules? polic(?:y|ies) manager "
        "fatigue systems? banner popup")),
    _noun("dependent", "dependent", "noun: a person one supports", "Claim a dependent."),
    _other("dependent", "dependent", "'depending on' a thing", "It is platform dependent.",
           r"\b" + _any(
               "platform implementation system locale codec version context time os hardware "
               "machine data input language application browser compiler architecture load size "
               "temperature dose frequency state path order") + r"\s+$"),
    _other("dependent", "dependent", "technical term", "Plot the dependent variable.", after=_head(
        "variables? clauses? types? packages? modules? jobs? tasks? services? events? fields? "
        "columns? samples?")),
    _noun("brooding", "brood", "noun: a family of young", "A brood of chicks."),
    _noun("tense", "tense", "grammar noun", "Use the tense that fits."),
    _other("tense", "tenses?", "grammar noun", "Use the past tense.", r"\b" + _any(
        "past present future perfect imperfect pluperfect progressive continuous conditional "
        "simple verb verbal grammatical narrative same consistent correct wrong different mixed "
        "mixing switch(?:ing|es)? shift(?:ing|s)? chang(?:e|es|ing)") + r"\s+$"),
    _other("tense", "tenses", "grammar noun, plural", "List all tenses.",
           rf"(?:{_DET}|\b(?:all|both|two|three|other|many|several|english))\s+$"),
    _other("tense", "tenses?", "grammar noun", "Avoid a tense shift.", after=_head(
        "shifts? agreement consistency usage markers? forms? errors? changes?")),
    _other("hostile", "hostile", "finance term", "A hostile takeover.", after=_head(
        "takeovers? bids?")),
    # --- Lexicalised terms in which the word describes nobody's feeling. ---
    _other("nervous", "nervous", "anatomy", "The nervous system.", after=_head(
        "systems? tissue")),
    _other("sympathetic", "sympathetic", "anatomy", "The sympathetic nervous system.",
           after=_head("nervous systems? nerves? activation response tone chain ganglia")),
    _other("sensitive", "sensitive", "technical term", "It is case sensitive.", r"\b" + _any(
        "case time context light heat temperature pressure touch price cost latency order "
        "whitespace locale position accent performance size input moisture frost motion "
        "interest rate") + r"\s+$"),
    _other("sensitive", "sensitive", "confidential", "Encrypt sensitive data.", after=_head(
        "data information info fields? files? values? keys? credentials documents? details "
        "materials? records? operations? variables? settings endpoints? personal")),
    _other("lazy", "lazy", "computing term", "Use lazy loading.", after=_head(
        "load loads loaded loading evaluation evaluated initiali[sz](?:ation|ed) init imports? "
        "iterators? sequences? val static attributes? propert(?:y|ies) quantifiers? "
        "match(?:ing)? fetch(?:ing)? deletion")),
    _other("eager", "eager", "computing term", "Run in eager mode.", after=_head(
        "load loads loaded loading evaluation execution mode fetch(?:ing)? quantifiers? "
        "match(?:ing)? initiali[sz]ation")),
    _other("greedy", "greedy", "algorithm term", "A greedy read strategy.", after=_head(
        "algorithms? approach(?:es)? search decoding match(?:es|ing)? quantifiers? "
        "strateg(?:y|ies) heuristics? choices? methods? solutions? selection sampling "
        "colou?ring", gap=1)),
    _other("optimistic", "optimistic", "computing term", "Use optimistic locking.", after=_head(
        "locking locks? concurrency updates? ui rendering responses? replication transactions? "
        "mutations?")),
    _other("reflective", "reflective", "optics", "Wear a reflective vest.", after=_head(
        "surfaces? materials? tape vests? jackets? coatings? paint glass strips? films? panels? "
        "signs? clothing gear markers? sheeting")),
    _other("happy", "happy", "fixed term", "Test the happy path.", after=_head("paths? hours?")),
    _other("excited", "excited", "physics", "An atom in an excited state.", after=_head(
        "states?")),
    _other("guilty", "guilty", "legal verdict", "He pleaded guilty.", r"\b" + _any(
        "plead pleads pleaded pled pleading found declared judged proven proved")
        + r"\s+(?:not\s+)?$"),
    _other("guilty", "guilty", "legal verdict", "A guilty verdict.", after=_head(
        "pleas? verdicts?")),
    _other("hurt", "hurts?", "idiom: no harm in", "It doesn't hurt to ask.",
           r"(?:n't|\bnot|\bnever)\s+$", r"\s+to\s+\w"),
    _other("panicked", "panic", "computing: a crash", "A kernel panic.", r"\bkernel\s+$"),
    # --- Base verbs of participle emotions, in their other senses. ---
    _other("alarmed", "alarms?", "a device or signal", "The alarm clock rang.", after=_head(
        "clocks? systems? bells? codes? panels? buttons? sounds? sounded sounding rang rings? "
        "ringing went goes go going beep(?:s|ed|ing)? blared blaring buzz(?:es|ed|ing)? chimed "
        "tones? app settings times? company monitoring signals? sirens? trigger(?:s|ed)? off "
        "for")),
    _other("alarmed", "alarms?", "a device or signal", "The fire alarm.", _mod(
        "a an fire smoke car burglar security house home intruder false snooze wake-up wakeup "
        "morning phone motion door clock \\d+")),
    _other("alarmed", "alarms?", "a device or signal", "She set the alarm.", r"\b" + _any(
        "set sets setting raise raised raises raising sound sounded sounds sounding silence "
        "silenced silencing snoozed snoozing tripped trip triggered trigger disabled? enabled? "
        "turn(?:s|ed|ing)?\\s+off switch(?:es|ed|ing)?\\s+off")
        + r"\s+(?:(?:the|an?|my|your|his|her|their|our)\s+)?$"),
    Sense("alarmed", "only", "alarms", "plural noun: devices; counts as a verb with an object",
          "It alarms me.", None, _OBJECT),
    _verb_only("pleased", "please", "the politeness word", "She tried to please him."),
    _verb_only("tired", "tires?", "noun: wheels", "It tires him."),
    Sense("tired", "only", "tires?", "verb: tire of, tire out", "He tires of it.", None,
          r"\s+(?:of|out)\b"),
    Sense("tired", "only", "tires?", "verb after an auxiliary or adverb", "She never tires.",
          r"\b" + _any(
              "never soon quickly easily rarely seldom don't doesn't didn't won't wouldn't will "
              "would to may might can could") + r"\s+$"),
    _verb_only("bored", "bores", "noun: tedious people; 'to drill'", "It bores me."),
    Sense("bored", "only", "bore", "mostly the past tense of 'bear' ('bore him a son'); counts "
          "as a present-tense verb with an object", "I won't bore you.",
          r"(?:\b(?:to|will|would|might|may|can|could|do|does|did|never|not)|n't)\s+$", _OBJECT),
    Sense("bored", "only", "bore", "noun: a tedious person or thing", "What a bore.",
          r"\b(?:a|such\s+a|what\s+a|total|complete|utter|crashing|terrible|awful)\s+$",
          r"\s*(?:[.,;:!?)]|$)"),
    _verb_only("trapped", "traps?", "noun: a device for catching", "It traps them."),
    _verb_only("puzzled", "puzzles?", "noun: a game or problem", "It puzzles me."),
    Sense("puzzled", "only", "puzzles?", "verb: puzzle over, puzzle out", "She puzzles over it.",
          None, r"\s+(?:over|out)\b"),
    _verb_only("rattled", "rattles?", "noun: a toy or a sound", "It rattles her."),
    _verb_only("troubled", "troubles?", "noun: difficulty", "It troubles me."),
    _other("shaken", "shake|shakes|shook|shaking", "gesture", "He shook his head.",
           after=r"\s+(?:(?:his|her|their|my|your|our|its|one's|a|the)\s+)?(?:heads?|hands?)\b"),
    _other("worn out", r"(?:wear|wears|wore|wearing|worn)(?: \w+)? out", "idiom",
           "He wore out his welcome.",
           after=r"\s+(?:(?:his|her|their|my|your|our|its)\s+)?welcome\b"),
    _other("refreshed", "refresh(?:es|ed|ing)?", "computing: reload", "Refresh the page.",
           after=r"\s+" + _ARTICLE + _any(
               "pages? browser screen caches? tokens? lists? data views? feeds? rates? buttons? "
               "intervals? display windows? tabs? app dashboard results index credentials "
               "session table grid query") + r"\b"),
    _other("refreshed", "refresh(?:es|ed|ing)?", "computing: reload", "Do a page refresh.",
           r"\b" + _any("page auto screen token cache hard soft data browser") + r"[\s\-]*$"),
    _other("fulfilled", "fulfill?(?:s|ed|ing)?", "carry out", "They fulfilled the order.",
           after=r"\s+" + _ARTICLE + r"(?:\w+\s+)?" + _any(
               "requirements? orders? requests? obligations? dut(?:y|ies) roles? functions? "
               "purposes? contracts? criteria criterion conditions? promises? needs? quotas? "
               "demands? mandates? prophec(?:y|ies) tasks? specifications? "
               "responsibilit(?:y|ies) commitments? terms") + r"\b"),
    _other("satisfied", "satisf(?:y|ies|ied|ying)", "logic: meet a condition",
           "j satisfying the first two conditions", after=r"\s+" + _ARTICLE + r"(?:\w+\s+){0,2}"
           + _any(
               "conditions? queries query counts? constraints? requirements? criteria criterion "
               "equations? inequalit(?:y|ies) propert(?:y|ies) tests? types? interfaces? "
               "specifications? specs? assumptions? rules? checks? predicates? bounds? "
               "invariants? axioms? formulas? clauses? dependenc(?:y|ies) demand") + r"\b"),
    _other("resigned", "resign(?:s|ed|ing)?", "quit a post", "He resigned from the board.",
           after=r"\s+(?:from|as)\b|\s+" + _ARTICLE + _any(
               "posts? positions? jobs? seats? office commissions? chairmanship membership role")
           + r"\b"),
    _other("aroused", "arous(?:e|es|ed|ing)", "evoke", "Her silence aroused suspicion.",
           after=r"\s+(?:(?:the|his|her|their|my|our|your|some|no|much|any|great|little|public"
           r"|considerable)\s+)?" + _any(
               "suspicions? interest curiosity concerns? sympathy attention debate controversy "
               "memories doubts?") + r"\b"),
    _other("stressed", "stress(?:es|ed|ing)?", "emphasis or engineering", "Run a stress test.",
           after=_head("tests? tested testing the\\s+importance the\\s+need syllables? vowels? "
                       "that")),
    _other("stressed", "stress(?:es|ed|ing)?", "phonetics", "Mark the word stress.",
           r"\b(?:word|syllable|primary|secondary|sentence|lexical)\s+$"),
    _other("shocked", "shocks?", "physical", "An electric shock.",
           r"\b(?:electric|electrical|static|septic|anaphylactic|toxic|thermal)\s+$"),
    _other("shocked", "shocks?", "physical", "Replace the shock absorbers.", after=_head(
        "absorbers? waves? collars? mounts? resistant resistance proof")),
    _other("relaxed", "relax(?:es|ed|ing)?", "loosen a rule", "Relax the constraint.",
           after=r"\s+" + _ARTICLE + r"(?:\w+\s+)?" + _any(
               "constraints? requirements? rules? assumptions? conditions? restrictions? bounds? "
               "checks? validation parsing mode") + r"\b"),
]


@lru_cache(maxsize=4096)
def _senses_for(emotion: str) -> tuple[tuple[Sense, re.Pattern, re.Pattern | None, ...], ...]:
    key = emotion.strip().lower()
    return tuple(
        (
            s,
            re.compile(s.forms),
            re.compile(s.before, re.IGNORECASE) if s.before else None,
            re.compile(s.after, re.IGNORECASE) if s.after else None,
        )
        for s in SENSES
        if s.emotion == key
    )


def _split(emotion: str) -> tuple[list[str], bool]:
    parts = re.split(rf"[\s{_DASHES}]+", emotion.strip().lower())
    return parts, "-" in emotion


def word_forms(emotion: str) -> set[str]:
    """Every surface form (lower case) that counts as naming ``emotion``.

    Parts of a form joined by " " match with whitespace or a dash between them, by "-" also with
    nothing between them. Context-dependent senses (``SENSES``) are applied by ``find_leaks``.
    """
    key = emotion.strip().lower()
    parts, hyphenated = _split(key)
    if len(parts) > 1 and not hyphenated:
        forms = {" ".join(parts)}  # a phrase ("at ease", "on edge") is not inflected
    elif len(parts) > 1:
        head = "-".join(parts[:-1])
        forms = {f"{head}-{f}" for f in inflections(parts[-1])}  # self-consciously
    else:
        forms = inflections(parts[0])
        for base in _base_verbs(parts[0]):
            forms |= verb_forms(base)
        if "iz" in parts[0]:  # British spelling: energised, energise, energising
            forms |= word_forms(parts[0].replace("iz", "is"))
    forms |= set(IRREGULAR.get(key, ()))
    return forms - set(OTHER_WORDS.get(key, {}))


def _searched_forms(emotion: str) -> set[str]:
    # The other words are searched too (and then dropped by ``_counts``): left out of the
    # pattern, "patient" would match inside "patient's".
    return word_forms(emotion) | set(OTHER_WORDS.get(emotion.strip().lower(), {}))


def _form_pattern(form: str) -> str:
    pattern = ""
    words = form.split(" ")
    for i, word in enumerate(words):
        pieces = [re.escape(p).replace("'", f"[{_APOSTROPHES}]") for p in word.split("-")]
        pattern += (_SEP if i else "") + _SEP_OPT.join(pieces)
        if i < len(words) - 1 and word in _PHRASAL_VERBS:
            pattern += rf"(?:{_SEP}{_PERSON})?"  # "wore him out"
    return pattern


@lru_cache(maxsize=4096)
def leak_pattern(emotion: str) -> re.Pattern[str]:
    """Compiled case-insensitive whole-word pattern for every form of ``emotion``."""
    forms = sorted(_searched_forms(emotion), key=len, reverse=True)
    body = "|".join(_form_pattern(f) for f in forms)
    return re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])", re.IGNORECASE)


# A code identifier, not prose: "obj.content", "is_patient", "content_type", "alert(".
_CODE_BEFORE = re.compile(r"\w[._]$")
_CODE_AFTER = re.compile(r"(?:[._]\w|\()")


def _canonical(found: str) -> str:
    found = found.lower().replace("\u2019", "'")
    return re.sub(_SEP, " ", found)


def _counts(text: str, start: int, end: int, emotion: str) -> bool:
    """Whether the form found at ``text[start:end]`` names ``emotion`` (see ``SENSES``)."""
    before, after = text[max(0, start - 80) : start], text[end : end + 80]
    if _CODE_BEFORE.search(before) or _CODE_AFTER.match(after):
        return False
    form = _canonical(text[start:end])
    if form in OTHER_WORDS.get(emotion.strip().lower(), {}):
        return False
    only_rules = only_hit = False
    for sense, forms, pre, post in _senses_for(emotion):
        if not forms.fullmatch(form):
            continue
        hit = (pre is None or pre.search(before) is not None) and (
            post is None or post.match(after) is not None
        )
        if sense.kind == "other" and hit:
            return False
        if sense.kind == "only":
            only_rules = True
            only_hit = only_hit or hit
    return only_hit or not only_rules


def find_leaks(text: str, emotion: str) -> list[str]:
    """The forms of ``emotion`` that ``text`` uses, as written (empty list: no leak)."""
    work = text.translate(_NORMALISE) if "\u02bc" in text else text
    return [
        text[m.start() : m.end()]
        for m in leak_pattern(emotion).finditer(work)
        if _counts(work, m.start(), m.end(), emotion)
    ]


def screen(text: str, emotions: list[str]) -> dict[str, list[str]]:
    """For a neutral text: which of ``emotions`` it names, with the forms found."""
    hits = {}
    for emotion in emotions:
        found = find_leaks(text, emotion)
        if found:
            hits[emotion] = found
    return hits
