"""The leak filter on cases that trip naive code."""

import re

import pytest

from emotion_vectors.core.config import read_list
from emotion_vectors.core.config import REPO_ROOT
from emotion_vectors.corpus.leak import IRREGULAR, OTHER_WORDS, SENSES, find_leaks, screen, word_forms


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


# --- Issue 7 item 6: misses and false flags of the filter, checked through ``find_leaks``. ---

EMOTIONS = read_list(REPO_ROOT / "config" / "emotions.txt", "emotions")


@pytest.mark.parametrize(
    "text, emotion, expected",
    [
        # panic -> panicked (the -ic verb takes -ck-).
        ("Panic rose in her chest.", "panicked", ["Panic"]),
        ("The noise panics him; she was panicking.", "panicked", ["panics", "panicking"]),
        # Irregular verbs: shake/shook/shaken, wear/wore/worn out.
        ("The news shook her.", "shaken", ["shook"]),
        ("She was shaking.", "shaken", ["shaking"]),
        ("The week wore him out.", "worn out", ["wore him out"]),
        ("It was wearing out everyone; wore out.", "worn out", ["wearing out", "wore out"]),
        ("The job is wearing her out.", "worn out", ["wearing her out"]),
        # Inflections of a hyphenated emotion.
        ("She laughed self-consciously.", "self-conscious", ["self-consciously"]),
        ("He spoke self-confidently.", "self-confident", ["self-confidently"]),
        ("He spoke self\u2013critically.", "self-critical", ["self\u2013critically"]),
        # En dash joints, modifier-letter apostrophe (U+02BC) possessives.
        ("Her worn\u2013out boots.", "worn out", ["worn\u2013out"]),
        ("Hope\u02bcs light was dim.", "hope", ["Hope\u02bcs"]),
        ("The calm\u02bcs end.", "calm", ["calm\u02bcs"]),
        # Adverbs of the verb's -ing participle, causative participles, spelling variants.
        ("Surprisingly, it worked.", "surprised", ["Surprisingly"]),
        ("Heartbreaking news; a heart-broken man.", "heartbroken",
         ["Heartbreaking", "heart-broken"]),
        ("She stood awe-struck.", "awestruck", ["awe-struck"]),
        ("He was sceptical.", "skeptical", ["sceptical"]),
        ("She felt energised.", "energized", ["energised"]),
    ],
)
def test_misses_are_caught(text, emotion, expected):
    assert find_leaks(text, emotion) == expected


@pytest.mark.parametrize(
    "text, emotion",
    [
        # The four false flags of the issue.
        ("Please pass the salt.", "pleased"),
        ("Please, God, help me. Can you please send it?", "pleased"),
        ("The patients waited in the hall.", "patient"),
        ("The car's tires were flat; he bought a new tire.", "tired"),
        ("The alarm clock rang at six.", "alarmed"),
        # The same kinds, found by going through config/emotions.txt.
        ("A patient came in; the patient said no; the patient\u2019s file.", "patient"),
        ("Update the patient records; the patient\u02bcs chart.", "patient"),
        ("The fire alarm went off. She set an alarm. The alarms are wired.", "alarmed"),
        ("The content of the file; the content is short; web content; the contents.", "content"),
        ("What kind of tool? This kind is better. All kinds. Kind regards.", "kind"),
        ("It was kind of slow.", "kind"),
        ("Use the past tense. Verb tenses differ.", "tense"),
        ("The safe was open; thread-safe code; a type-safe API.", "safe"),
        ("An alert was raised; email alerts; to alert the team.", "alert"),
        ("They were scarred; a scar.", "scared"),
        ("Their pleas went unheard.", "pleased"),
        ("A lovely day; her lover.", "loving"),
        ("A thriller; the offender; a shocker.", "thrilled"),
        ("The offender fled.", "offended"),
        ("She bore the weight; he bore him a son.", "bored"),
        ("I am having trouble with the code.", "troubled"),
        ("A jigsaw puzzle; the trap snapped.", "puzzled"),
        ("The trap snapped; set traps.", "trapped"),
        ("He shook his head and shook hands.", "shaken"),
        ("She wore a dress. He wore out his welcome.", "worn out"),
        ("It doesn't hurt to ask; it never hurts to check.", "hurt"),
        ("Refresh the page; a page refresh.", "refreshed"),
        ("The warehouse fulfilled the order; fulfil the requirements.", "fulfilled"),
        ("x satisfies the constraint.", "satisfied"),
        ("He resigned from the board.", "resigned"),
        ("Her silence aroused suspicion.", "aroused"),
        ("The nervous system.", "nervous"),
        ("The sympathetic nervous system.", "sympathetic"),
        ("Matching is case-sensitive; sensitive data.", "sensitive"),
        ("The encoding is platform-dependent; a dependent variable.", "dependent"),
        ("Use lazy loading.", "lazy"),
        ("A greedy algorithm.", "greedy"),
        ("Test the happy path.", "happy"),
        ("a stress test", "stressed"),
        ("He pleaded guilty.", "guilty"),
        ("a kernel panic", "panicked"),
        ("an electric shock", "shocked"),
        ("A brood of chicks.", "brooding"),
        ("a hostile takeover", "hostile"),
        # Code identifiers are not prose.
        ("resp.content = x; content_type = y; alert('hi'); is_patient = True", "content"),
        ("alert('hi')", "alert"),
        ("is_patient = True", "patient"),
    ],
)
def test_other_senses_are_not_flagged(text, emotion):
    assert find_leaks(text, emotion) == []


@pytest.mark.parametrize(
    "text, emotion, expected",
    [
        # The emotion senses of the same spellings still count.
        ("It pleases him; she was eager to please her mother.", "pleased", ["pleases", "please"]),
        ("She was patient with him; a patient man; she waited patiently.", "patient",
         ["patient", "patient", "patiently"]),
        ("It tires him; she never tires of it; a tiring day.", "tired",
         ["tires", "tires", "tiring"]),
        ("She looked up in alarm. To her alarm, it moved. It alarms me.", "alarmed",
         ["alarm", "alarm", "alarms"]),
        ("She was content; a content smile; he contented himself.", "content",
         ["content", "content", "contented"]),
        ("She was kind. That was kind of you. A kind man.", "kind", ["kind", "kind", "kind"]),
        ("The tense moment; he tenses up.", "tense", ["tense", "tenses"]),
        ("She felt safe; a safe place.", "safe", ["safe", "safe"]),
        ("Stay alert; an alert guard.", "alert", ["alert", "alert"]),
        ("It bores me. What a bore. I won't bore you.", "bored", ["bores", "bore", "bore"]),
        ("It troubles me; troubling news.", "troubled", ["troubles", "troubling"]),
        ("It traps them; she felt trapped.", "trapped", ["traps", "trapped"]),
        ("It puzzles me; she puzzled over it.", "puzzled", ["puzzles", "puzzled"]),
        ("Her words hurt.", "hurt", ["hurt"]),
        ("She resigned herself to it.", "resigned", ["resigned"]),
        ("A refreshing swim.", "refreshed", ["refreshing"]),
        ("A fulfilling job.", "fulfilled", ["fulfilling"]),
        ("She was nervous.", "nervous", ["nervous"]),
        ("He brooded.", "brooding", ["brooded"]),
        ("She shook with rage.", "shaken", ["shook"]),
    ],
)
def test_emotion_senses_still_count(text, emotion, expected):
    assert find_leaks(text, emotion) == expected


def test_other_words_are_not_forms():
    assert not {"scar", "scars", "scarred", "scarring"} & word_forms("scared")
    assert not {"lovely", "lover"} & word_forms("loving")
    assert not {"thriller", "offender", "pleas"} & (
        word_forms("thrilled") | word_forms("offended") | word_forms("pleased")
    )
    assert "patients" not in word_forms("patient") and "patient" in word_forms("patient")
    assert {"panic", "panics", "panicking", "panicked"} <= word_forms("panicked")
    assert {"shake", "shakes", "shook", "shaking", "shaken"} <= word_forms("shaken")


def test_exception_tables_name_study_emotions_and_their_forms():
    """Every curated entry applies to a study emotion and to at least one of its forms."""
    for sense in SENSES:
        assert sense.emotion in EMOTIONS, sense
        assert sense.kind in {"other", "only"}, sense
        assert sense.reason, sense
        assert any(re.fullmatch(sense.forms, f) for f in word_forms(sense.emotion)), sense
    for table in (OTHER_WORDS, IRREGULAR):
        assert set(table) <= set(EMOTIONS)
    for emotion, words in OTHER_WORDS.items():
        for word, reason in words.items():
            assert reason and word not in word_forms(emotion)


@pytest.mark.parametrize("sense", SENSES, ids=lambda s: f"{s.emotion}:{s.example}")
def test_each_curated_sense_decides_its_example(sense):
    found = find_leaks(sense.example, sense.emotion)
    assert (found == []) if sense.kind == "other" else found, found


def test_markdown_emphasis_still_counts_but_code_identifiers_do_not():
    assert find_leaks("She was _happy_ and *happy*.", "happy") == ["happy", "happy"]
    assert find_leaks("happy_path(); self.happy = 1; happy(x)", "happy") == []


def test_screen_on_a_neutral_dialogue_flags_only_emotion_words():
    text = (
        "Human: Please list the patients seen today and set an alarm clock for 6.\n"
        "Assistant: Sure. The content of the report is below; what kind of chart do you want? "
        "I'm sorry the tires report was late. I hope this helps."
    )
    assert screen(text, EMOTIONS) == {"sorry": ["sorry"], "hope": ["hope"]}
