"""Splitting generator replies into stories and dialogue turns."""

from emotion_vectors.parsing import (
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
