"""Splitting generator replies into stories and dialogue turns."""

from emotion_vectors.corpus.parsing import (
    Turn,
    dialogue_problem,
    parse_dialogue,
    render_dialogue,
    split_stories,
    trim_to_sentence,
)


def test_story_markers_bold_titles_and_chatter():
    reply = (
        "Here are two stories:\n\n**Story 1: The Fence**\nMaria watched the neighbor pace the line. "
        "Her hands shook.\n\n**Story 2**\nTom counted the posts. He did not sleep.\n\nI hope you enjoy them!"
    )
    assert split_stories(reply, 2) == [
        "Maria watched the neighbor pace the line. Her hands shook.",
        "Tom counted the posts. He did not sleep.",
    ]


def test_label_lines_and_truncated_last_story():
    reply = (
        "The first story:\nStory 1:\nThe sun rose. She was a guardian.\n\nThe second story:\n"
        "Story 2:\nThe earth was quiet. She had gone to other worlds. Each story has a diff"
    )
    assert split_stories(reply, 2, truncated=True) == [
        "The sun rose. She was a guardian.",
        "The earth was quiet. She had gone to other worlds.",
    ]


def test_numbered_lists_separators_and_limits():
    assert split_stories("1. One here. Done.\n2) Two here.\n3. Three.", 2) == ["One here. Done.", "Two here."]
    assert split_stories("First story text.\n---\nSecond story text.", 2) == ["First story text.", "Second story text."]
    assert split_stories("Only one story here.", 3) == ["Only one story here."]


def test_single_story_drops_title_and_label():
    assert split_stories("Title: Fence Day\nHe walked to the fence. It was tall.", 1) == [
        "He walked to the fence. It was tall."
    ]
    assert split_stories("Story 1: He walked to the fence.", 1) == ["He walked to the fence."]


def test_trim_to_sentence():
    assert trim_to_sentence('He said "stop." Then he') == 'He said "stop."'
    assert trim_to_sentence("no sentence end") == ""


def test_dialogue_parse_roles_code_and_truncation():
    reply = (
        "Sure, here is a transcript.\nHuman: How do I sort a list in Python?\nAssistant: Use sorted(xs).\n"
        "```python\nsorted([3, 1])\n```\n**Human:** And in reverse?\nAI: sorted(xs, reverse=True).\nHuman: And"
    )
    turns = parse_dialogue(reply, truncated=True)
    assert [t.role for t in turns] == ["human", "assistant", "human", "assistant"]
    assert "```python\nsorted([3, 1])\n```" in turns[1].text
    assert dialogue_problem(turns, 2) is None
    text = render_dialogue(turns, "Be brief.")
    assert text.startswith("System: Be brief.\n\nHuman: How do I sort")
    assert text.endswith("Assistant: sorted(xs, reverse=True).")


def test_dialogue_problems():
    assert dialogue_problem([Turn("human", "x")], 2) == "too_few_turns"
    assert dialogue_problem([Turn("assistant", "x"), Turn("human", "y")], 2) == "not_human_first"
    assert parse_dialogue("no speakers at all") == []
    merged = parse_dialogue("Human: a\nUser: b\nAssistant: c")
    assert merged == [Turn("human", "a\nb"), Turn("assistant", "c")]


# --- Each cleaning and splitting rule on its own (mutation testing found them untested). ---


def test_story_cleaning_rules():
    # Markdown emphasis inside the text goes, the words stay; runs of whitespace become one space.
    assert split_stories("She was **very** late. It __rained__.", 1) == ["She was very late. It rained."]
    assert split_stories("He  walked\tto the fence.\nShe ran home.", 1) == ["He walked to the fence. She ran home."]
    # Quotes around the whole story go (straight and curly).
    assert split_stories('"He walked to the fence."', 1) == ["He walked to the fence."]
    assert split_stories("\u201cHe walked to the fence.\u201d", 1) == ["He walked to the fence."]
    assert split_stories('"Xavier walked to the fence. X"', 1) == ["Xavier walked to the fence. X"]  # only quotes
    # A leading "Title:" goes in any case; a one-line story without a full stop is kept.
    assert split_stories("TITLE: He walked to the fence. It was tall.", 1) == ["He walked to the fence. It was tall."]
    assert split_stories("He walked to the fence", 1) == ["He walked to the fence"]


def test_title_and_label_lines_by_length():
    """A first line of at most 10 words without sentence punctuation is a title; a line ending
    in ':' of at most 6 words is a label; longer lines are text."""
    ten = "one two three four five six seven eight nine ten"
    assert split_stories(f"{ten}\nHe sat down.", 1) == ["He sat down."]
    assert split_stories(f"{ten} eleven\nHe sat down.", 1) == [f"{ten} eleven He sat down."]
    assert split_stories("He sat down.\nThe story goes on like this:\nShe left.", 1) == ["He sat down. She left."]
    assert split_stories("He sat down.\nThe story goes on like this here:\nShe left.", 1) == [
        "He sat down. The story goes on like this here: She left."
    ]


def test_story_markers_paragraphs_and_single_story_markers():
    # Two markers suffice to split on markers.
    assert split_stories("Story 1: He ran.\nStory 2: She sat.", 2) == ["He ran.", "She sat."]
    # No markers, no separator: blank lines split the stories.
    assert split_stories("He ran home.\n\nShe sat down.", 2) == ["He ran home.", "She sat down."]
    assert split_stories("He ran home.\r\n\r\nShe sat down.", 2) == ["He ran home.", "She sat down."]
    # One story: only a leading marker is removed, a numbered line inside is text.
    assert split_stories("Story 1: He counted.\n2. Then he slept.", 1) == ["He counted. 2. Then he slept."]
    assert split_stories("He counted.\n2. Then he slept.", 1) == ["He counted. 2. Then he slept."]


def test_only_a_truncated_reply_loses_its_unfinished_last_sentence():
    assert split_stories("He ran. She", 1) == ["He ran. She"]
    assert split_stories("He ran. She", 1, truncated=True) == ["He ran."]
    reply = "Story 1: One. Done\nStory 2: Two. Done\nStory 3: Three. Cut"
    assert split_stories(reply, 3, truncated=True) == ["One. Done", "Two. Done", "Three."]
    assert split_stories("", 2, truncated=True) == []


def test_dialogue_continuations_blank_lines_and_line_endings():
    turns = parse_dialogue("Human: a\nAssistant: b\nHuman: c\nmore\n\n\n\nafter")
    assert turns == [Turn("human", "a"), Turn("assistant", "b"), Turn("human", "c\nmore\n\nafter")]
    assert parse_dialogue("Human: a\r\nmore\r\nAssistant: b") == [Turn("human", "a\nmore"), Turn("assistant", "b")]


def test_dialogue_problems_and_rendering_leave_system_turns_out():
    turns = [Turn("system", "Be brief."), Turn("human", "a"), Turn("assistant", "b")]
    assert dialogue_problem(turns, 2) is None
    assert dialogue_problem([Turn("human", "a"), Turn("human", "b")], 2) == "not_alternating"
    assert render_dialogue(turns) == "Human: a\n\nAssistant: b"
    assert render_dialogue(turns, "Be kind.") == "System: Be kind.\n\nHuman: a\n\nAssistant: b"
