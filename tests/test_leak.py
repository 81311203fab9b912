"""The leak filter on cases that trip naive code."""

import pytest

from emotion_vectors.config import read_list
from emotion_vectors.config import REPO_ROOT
from emotion_vectors.leak import find_leaks, screen, word_forms


@pytest.mark.parametrize(
    "text, emotion, expected",
    [
        # Substring code flags these; they are other words.
        ("Hopefully the fence goes up soon.", "hope", []),
        ("The madness of the renovation.", "mad", []),
        ("She made tea.", "mad", []),
        ("A hopeless, helpless feeling.", "hope", []),
        ("The calmness of the lake.", "calm", []),  # a derivation, not an inflection
        # ...but the derivation of an emotion that is itself in the list does leak it.
        ("Hopefully the fence goes up soon.", "hopeful", ["Hopefully"]),
        # Capitalised, possessive, inflected.
        ("Afraid, she stepped back.", "afraid", ["Afraid"]),
        ("Hope's light was dim.", "hope", ["Hope's"]),
        ("Hope\u2019s light was dim.", "hope", ["Hope\u2019s"]),
        ("He hoped, hoping, hopes.", "hope", ["hoped", "hoping", "hopes"]),
        ("sadder and saddest, sadly", "sad", ["sadder", "saddest", "sadly"]),
        ("She smiled happily, happier than ever.", "happy", ["happily", "happier"]),
        ("That was upsetting.", "upset", ["upsetting"]),
        # Participle emotions leak through their base verb.
        ("What a boring meeting.", "bored", ["boring"]),
        ("He worries too much.", "worried", ["worries"]),
        ("She loves him.", "loving", ["loves"]),
        # Multiword: any spacing, line breaks, case; hyphenated: spaces, hyphen or none.
        ("She was at  ease.", "at ease", ["at  ease"]),
        ("He felt At\nEase.", "at ease", ["At\nEase"]),
        ("They were at peace, easy.", "at ease", []),
        ("grief stricken, grief-stricken, griefstricken", "grief-stricken", ["grief stricken", "grief-stricken", "griefstricken"]),
        ("The grief struck her.", "grief-stricken", []),
        ("Worn-out boots; worn out.", "worn out", ["Worn-out", "worn out"]),
        ("He was on edge.", "on edge", ["on edge"]),
        ("The edge of the table.", "on edge", []),
        ("Self conscious and SELF-CONSCIOUS", "self-conscious", ["Self conscious", "SELF-CONSCIOUS"]),
        # Word boundaries: letters or digits on either side block a match.
        ("calm2 xcalm calmx", "calm", []),
        ("re-calm", "calm", ["calm"]),
    ],
)
def test_find_leaks(text, emotion, expected):
    assert find_leaks(text, emotion) == expected


def test_every_study_emotion_matches_itself_and_not_an_empty_text():
    emotions = read_list(REPO_ROOT / "config" / "emotions.txt", "emotions")
    assert len(emotions) == 171
    for emotion in emotions:
        assert find_leaks(f"They said: {emotion.upper()}.", emotion), emotion
        assert find_leaks(f"The {emotion} one.", emotion), emotion
        assert not find_leaks("The neighbor measured the fence twice.", emotion), emotion


def test_screen_names_each_emotion_found():
    hits = screen("I am happy to help; this is a calm, boring task.", ["happy", "calm", "bored", "sad"])
    assert hits == {"happy": ["happy"], "calm": ["calm"], "bored": ["boring"]}


def test_multiword_forms_are_not_inflected():
    assert word_forms("at ease") == {"at ease"}
