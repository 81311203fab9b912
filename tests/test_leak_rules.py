"""The leak filter's word-form rules, one rule at a time (``emotion_vectors.corpus.leak``).

``tests/test_leak.py`` checks the filter on texts; these check the rules it is built from, each
against hand-made forms, so that a broken rule fails here even when another rule happens to
produce the same form. Over-generated non-words ("hopeed") are harmless and not pinned; the
real forms each rule is there for, and the real words each guard keeps out, are.
"""

import pytest

from emotion_vectors.core.config import REPO_ROOT, read_list
from emotion_vectors.corpus.leak import (
    _AFTER_DET,
    _NOUN_END,
    _OBJECT,
    Sense,
    _any,
    _base_verbs,
    _doubles_final_consonant,
    _head,
    _mod,
    _noun,
    _other,
    _plurals,
    _stems,
    _verb_only,
    find_leaks,
    inflections,
    verb_forms,
    word_forms,
)

EMOTIONS = read_list(REPO_ROOT / "config" / "emotions.txt", "emotions")


def test_every_form_of_every_study_emotion_is_lower_case():
    """Forms are lower case (``word_forms``'s contract; the pattern adds case-insensitivity)."""
    for emotion in EMOTIONS:
        forms = word_forms(emotion)
        assert forms and all(f == f.lower() for f in forms), (emotion, sorted(f for f in forms if f != f.lower()))
    for word in ("worry", "panic", "gentle", "hope", "calm", "stress", "love"):
        assert all(f == f.lower() for f in inflections(word) | verb_forms(word)), word


def test_final_consonant_doubling():
    """consonant-vowel-consonant endings double (sad, upset); w, x and y never do; three letters at least."""
    doubling = ["sad", "upset", "mad", "hug", "stop"]
    not_doubling = ["calm", "hope", "box", "glow", "play", "fix", "ox", "ad", "keep", "burn", "sea"]
    assert [w for w in doubling + not_doubling if _doubles_final_consonant(w)] == doubling


def test_stems():
    assert _stems("calm") == {"calm"}
    assert _stems("hope") == {"hope", "hop"}  # e-drop
    assert _stems("worry") == {"worry", "worri"}  # consonant + y -> i
    assert _stems("shy") == {"shy", "shi"}
    assert _stems("enjoy") == {"enjoy"}  # vowel + y: no i
    assert _stems("by") == {"by"}  # two letters: no y -> i
    assert _stems("sad") == {"sad", "sadd"}  # doubling
    assert _stems("panic") == {"panic", "panicc", "panick"}  # -ic takes -ck- ("panicc": harmless)


def test_plurals():
    assert _plurals("calm") == {"calms", "calmes"}
    assert _plurals("stress") == {"stresss", "stresses"}
    assert _plurals("worry") == {"worrys", "worryes", "worries"}
    assert _plurals("shy") == {"shys", "shyes", "shies"}
    assert _plurals("enjoy") == {"enjoys", "enjoyes"}
    assert _plurals("by") == {"bys", "byes"}


def test_inflections_make_the_real_forms():
    real = {
        "calm": {"calm", "calm's", "calms", "calmed", "calming", "calmer", "calmest", "calmly"},
        "sad": {"sad", "sads", "sadder", "saddest", "sadly"},
        "hope": {"hope", "hope's", "hopes", "hoped", "hoping", "hoper"},
        "happy": {"happy", "happier", "happiest", "happily"},
        "worry": {"worry", "worries", "worried", "worrying"},
        "gentle": {"gentle", "gentler", "gentlest", "gently", "gentled"},
        "panic": {"panic", "panics", "panicked", "panicking", "panically"},
        "angry": {"angrier", "angriest", "angrily"},
    }
    for word, forms in real.items():
        assert forms <= inflections(word), (word, sorted(forms - inflections(word)))
    # -ic words take -ck- only in their verb forms: no "panicker", "panickly", "panickest".
    assert not {"panicker", "panickest", "panickly"} & inflections("panic")
    # -ally only after -ic, -ly for -le only as -y (gently, not "gentlely" as a real form).
    assert "calmally" not in inflections("calm") and "calmy" not in inflections("calm")
    assert "gently" in inflections("gentle") and "hoply" in inflections("hope")


def test_verb_forms_have_no_agent_or_adverb_of_the_verb_itself():
    assert {"love", "loves", "loved", "loving", "lovingly", "love's"} <= verb_forms("love")
    assert not {"lover", "lovely", "lovest"} & verb_forms("love")
    assert {"stresses", "stressed", "stressing", "stressingly"} <= verb_forms("stress")
    assert {"worries", "worried", "worrying", "worryingly"} <= verb_forms("worry")
    assert {"panicked", "panicking"} <= verb_forms("panic")


def test_base_verbs_of_participles():
    """The docstring's examples, and words that are no participle at all."""
    assert _base_verbs("bored") == {"bore"}
    assert _base_verbs("scared") == {"scare"}  # never "scar"
    assert _base_verbs("loving") == {"love"}  # one-syllable CVC stem: takes -e, never "lov"
    assert _base_verbs("worried") == {"worrie", "worri", "worry"}
    assert _base_verbs("panicked") == {"panicke", "panick", "panic"}
    assert _base_verbs("upsetting") == {"upsette", "upsett", "upset"}
    assert _base_verbs("kicked") == {"kicke", "kick"}  # a 4-letter -ick stem is no -ic verb
    assert "mimic" in _base_verbs("mimicked")  # the shortest -ic verbs (panic, mimic): 5 letters
    # ...so a 5-letter -ick stem is no -ic verb either: "pric" would make "prices", "priced"
    assert _base_verbs("pricked") == {"pricke", "prick"}
    assert _base_verbs("tricked") == {"tricke", "trick"}
    assert not {"prices", "priced", "pricing", "slices", "sliced"} & (word_forms("pricked") | word_forms("slicked"))
    assert {"prick", "pricks", "pricking", "slick", "slicking"} <= word_forms("pricked") | word_forms("slicked")
    assert _base_verbs("stressed") == {"stresse", "stress", "stres"}
    for word in ("calm", "afraid", "happy", "shed", "bring", "red", "sing"):
        assert _base_verbs(word) == set(), word


def test_forms_of_hyphenated_and_multiword_emotions():
    """The last part of a hyphenated emotion inflects, whatever the number of parts."""
    assert {"self-conscious", "self-consciously"} <= word_forms("self-conscious")
    forms = word_forms("happy-go-lucky")
    assert {"happy-go-lucky", "happy-go-luckier", "happy-go-luckily"} <= forms
    assert all(f.startswith("happy-go-") for f in forms)
    assert word_forms("on edge") == {"on edge"}


def test_british_spellings_of_ize_emotions():
    forms = word_forms("energized")
    assert {"energised", "energise", "energising", "energized", "energizing"} <= forms
    assert "energized" in word_forms("energized") and not any("is" in f for f in word_forms("calm"))


@pytest.mark.parametrize(
    "text, emotion, expected",
    [
        # -es plurals of verbs ending in a sibilant.
        ("It stresses him.", "stressed", ["stresses"]),
        ("The sea relaxes her.", "relaxed", ["relaxes"]),
        ("It astonishes them.", "astonished", ["astonishes"]),
        ("He worries.", "worried", ["worries"]),
        # possessives of multiword and plain emotions, straight and curly apostrophes
        ("The calm's end; the calm\u2019s end.", "calm", ["calm's", "calm\u2019s"]),
        ("She was panicking; panicky; he panicked.", "panicked", ["panicking", "panicked"]),
        ("He felt ecstatic, ecstatically so.", "ecstatic", ["ecstatic", "ecstatically"]),
        ("The patient's file; the patients' files.", "patient", []),
    ],
)
def test_forms_found_in_text(text, emotion, expected):
    assert find_leaks(text, emotion) == expected


def test_sense_table_builders():
    """The helpers the ``SENSES`` table is written with (run at import, so tested directly)."""
    assert _any("a b? c") == "(?:a|b?|c)"
    assert _mod("fire smoke") == r"\b(?:fire|smoke)[\s\-]+$"
    assert _head("clock clocks") == r"[\s\-]+(?:\w+\s+){0,0}(?:clock|clocks)\b"
    assert _head("path", gap=2) == r"[\s\-]+(?:\w+\s+){0,2}(?:path)\b"
    assert _other("calm", "calm", "why", "ex", "b", "a") == Sense("calm", "other", "calm", "why", "ex", "b", "a")
    assert _other("calm", "calm", "why", "ex") == Sense("calm", "other", "calm", "why", "ex", None, None)
    assert _noun("patient", "patient", "noun", "The patient said no.") == Sense(
        "patient", "other", "patient", "noun", "The patient said no.", _AFTER_DET, _NOUN_END)
    assert _verb_only("tired", "tires?", "wheels", "It tires him.") == Sense(
        "tired", "only", "tires?", "wheels", "It tires him.", None, _OBJECT)


def test_phrasal_verbs_take_a_person_only_inside_a_form():
    from emotion_vectors.corpus.leak import _PERSON, _SEP, _SEP_OPT, _form_pattern

    assert _form_pattern("wear") == "wear"  # alone: nothing can sit inside
    assert _form_pattern("wear out") == f"wear(?:{_SEP}{_PERSON})?{_SEP}out"
    assert _form_pattern("out wear") == f"out{_SEP}wear"  # not the last word
    assert _form_pattern("grief-stricken") == f"grief{_SEP_OPT}stricken"
    assert _form_pattern("hope's") == "hope[\u0027\u2019]s"


def test_context_is_read_80_characters_each_side():
    """The senses look at most 80 characters before and after a form."""
    # "the" 80 characters back still makes "patient" a noun; 81 back it is out of sight
    assert find_leaks("the" + " " * 77 + "patient said no.", "patient") == []
    assert find_leaks("the" + " " * 78 + "patient said no.", "patient") == ["patient"]
    # "demand" ending 80 characters after "satisfies" makes it the logic sense; 81 does not
    assert find_leaks("x satisfies" + " " * 74 + "demand.", "satisfied") == []
    assert find_leaks("x satisfies" + " " * 75 + "demand.", "satisfied") == ["satisfies"]
