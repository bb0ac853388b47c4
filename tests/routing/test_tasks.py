from __future__ import annotations

import itertools

import pytest
from faregate_server.domain import ChatMessage, Role, TaskKind
from faregate_server.routing.tasks import TASK_DIFFICULTY, classify_task
from hypothesis import given
from hypothesis import strategies as st

# One keyword of weight 2 per kind, each matching nothing else, for tie tests.
_WEIGHT_TWO_KEYWORD = {
    TaskKind.SECURITY_REVIEW: "sanitize",
    TaskKind.DEBUG: "crash",
    TaskKind.PLANNING: "milestones",
    TaskKind.ORCHESTRATION: "pipeline",
    TaskKind.REFACTOR: "rename",
    TaskKind.REVIEW: "diff",
    TaskKind.UNIT_TEST: "mock",
    TaskKind.EXPLAIN: "docstring",
    TaskKind.GENERATION: "implement",
    TaskKind.BOILERPLATE: "stub",
}
_TIE_ORDER = (
    TaskKind.SECURITY_REVIEW,
    TaskKind.DEBUG,
    TaskKind.PLANNING,
    TaskKind.ORCHESTRATION,
    TaskKind.REFACTOR,
    TaskKind.REVIEW,
    TaskKind.UNIT_TEST,
    TaskKind.EXPLAIN,
    TaskKind.GENERATION,
    TaskKind.BOILERPLATE,
)
_TWO_CODE_BLOCKS = "\n```python\nx = 1\n```\nand\n```python\ny = 2\n```\n"


def _user(text: str) -> list[ChatMessage]:
    return [ChatMessage(Role.USER, text)]


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        (
            "Audit this login handler for SQL injection and XSS before we ship it.",
            TaskKind.SECURITY_REVIEW,
        ),
        (
            "Is this endpoint vulnerable to CSRF? Do a security review of the session cookies.",
            TaskKind.SECURITY_REVIEW,
        ),
        (
            "Check whether an attacker can exploit the upload path to escape the uploads dir.",
            TaskKind.SECURITY_REVIEW,
        ),
        (
            "Write pytest unit tests for the Ledger.reserve method, including the edge cases.",
            TaskKind.UNIT_TEST,
        ),
        (
            "Add test cases covering the empty-input and unicode paths of slugify(), "
            "mocking the clock.",
            TaskKind.UNIT_TEST,
        ),
        ("Our coverage on budgets.py is 60%; add tests for the refund branch.", TaskKind.UNIT_TEST),
        (
            "Getting this when I start the server:\nTraceback (most recent call last):\n"
            "  File \"app.py\", line 3\nKeyError: 'listen'",
            TaskKind.DEBUG,
        ),
        (
            "The retry loop doesn't work: requests still fail after the first 429. "
            "Can you find the bug?",
            TaskKind.DEBUG,
        ),
        ("npm run build crashes with a segfault on Alpine, how do I fix it?", TaskKind.DEBUG),
        ("Fix the failing unit test in test_budgets.py", TaskKind.DEBUG),
        (
            "Refactor the provider module to extract the SSE parsing into its own class.",
            TaskKind.REFACTOR,
        ),
        (
            "This function is 200 lines long; clean it up and simplify the nested ifs "
            "without changing behaviour.",
            TaskKind.REFACTOR,
        ),
        (
            "Rename `cfg` to `config` everywhere and restructure the package into smaller modules.",
            TaskKind.REFACTOR,
        ),
        ("Optimize this loop, it's too slow.", TaskKind.REFACTOR),
        (
            "Can you review my pull request? Here's the diff for the rate limiter.",
            TaskKind.REVIEW,
        ),
        (
            "Give me feedback on this function: is the naming clear and is anything missing?",
            TaskKind.REVIEW,
        ),
        ("Critique this API before I merge it.", TaskKind.REVIEW),
        (
            "Plan the migration from REST to gRPC: break down the work into milestones and "
            "the trade-offs of each approach.",
            TaskKind.PLANNING,
        ),
        (
            "What architecture would you suggest for a multi-region cache? "
            "Compare the pros and cons.",
            TaskKind.PLANNING,
        ),
        ("Write a design doc for the new caching layer.", TaskKind.PLANNING),
        (
            "Orchestrate three sub-agents: one researches, one writes the patch, one runs "
            "the tests, and coordinate their handoffs.",
            TaskKind.ORCHESTRATION,
        ),
        (
            "Split this job into subtasks and delegate each to a worker agent, "
            "then merge their results.",
            TaskKind.ORCHESTRATION,
        ),
        (
            "Set up a workflow where the planner agent makes tool calls and dispatches "
            "results to the coder agent.",
            TaskKind.ORCHESTRATION,
        ),
        ("Explain what this regex does: ^(?:[a-z0-9-]+\\.)+[a-z]{2,}$", TaskKind.EXPLAIN),
        (
            "How does asyncio.TaskGroup cancel its children when one fails? Walk me through it.",
            TaskKind.EXPLAIN,
        ),
        ("What is the difference between a list and a tuple in Python?", TaskKind.EXPLAIN),
        ("Implement a function that parses ISO 8601 durations into seconds.", TaskKind.GENERATION),
        (
            "Write a script that downloads the nightly report and emails it to the team.",
            TaskKind.GENERATION,
        ),
        ("Create a CLI command that prints the current budget balance.", TaskKind.GENERATION),
        ("Can you help me with this code?", TaskKind.GENERATION),
        (
            "Generate the boilerplate for a FastAPI CRUD app with a Todo model.",
            TaskKind.BOILERPLATE,
        ),
        (
            "Scaffold a new Python package with a pyproject, a gitignore and a tests folder.",
            TaskKind.BOILERPLATE,
        ),
        ("Add getters and setters for every field of the Account class.", TaskKind.BOILERPLATE),
    ],
)
def test_prompt_is_classified_as_its_task_kind(prompt: str, kind: TaskKind) -> None:
    assert classify_task(_user(prompt)) is kind


def test_task_kinds_are_the_ten_lower_case_names() -> None:
    assert [kind.value for kind in TaskKind] == [kind.name.lower() for kind in TaskKind]
    assert {kind.name for kind in TaskKind} == {
        "BOILERPLATE",
        "GENERATION",
        "REFACTOR",
        "REVIEW",
        "UNIT_TEST",
        "PLANNING",
        "ORCHESTRATION",
        "SECURITY_REVIEW",
        "DEBUG",
        "EXPLAIN",
    }


def test_every_kind_has_a_difficulty_between_zero_and_one() -> None:
    assert set(TASK_DIFFICULTY) == set(TaskKind)
    assert all(0.0 <= difficulty <= 1.0 for difficulty in TASK_DIFFICULTY.values())
    assert TASK_DIFFICULTY[TaskKind.SECURITY_REVIEW] > TASK_DIFFICULTY[TaskKind.BOILERPLATE]


@pytest.mark.parametrize(("winner", "loser"), list(itertools.combinations(_TIE_ORDER, 2)))
def test_a_tie_goes_to_the_kind_earlier_in_the_documented_order(
    winner: TaskKind, loser: TaskKind
) -> None:
    first, second = _WEIGHT_TWO_KEYWORD[winner], _WEIGHT_TWO_KEYWORD[loser]

    assert classify_task(_user(f"{first} {second}")) is winner
    assert classify_task(_user(f"{second} {first}")) is winner


def test_a_complex_prompt_breaks_ties_towards_refactor_but_not_past_security() -> None:
    tie = "There is a crash; rename things."

    assert classify_task(_user(tie)) is TaskKind.DEBUG
    assert classify_task(_user(tie + _TWO_CODE_BLOCKS)) is TaskKind.REFACTOR
    assert classify_task(_user("sanitize and rename" + _TWO_CODE_BLOCKS)) is (
        TaskKind.SECURITY_REVIEW
    )


def test_complexity_never_outweighs_a_keyword_hit() -> None:
    long_prompt = "Here is the module.\n" * 200 + _TWO_CODE_BLOCKS + "Can you explain it?"

    assert classify_task(_user(long_prompt)) is TaskKind.EXPLAIN


def test_a_complex_prompt_without_hits_is_planning() -> None:
    assert classify_task(_user("Thoughts?" + _TWO_CODE_BLOCKS)) is TaskKind.PLANNING


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t \n", "ok thanks"])
def test_an_empty_or_short_prompt_without_hits_is_generation(prompt: str) -> None:
    assert classify_task(_user(prompt)) is TaskKind.GENERATION


def test_no_messages_at_all_is_generation() -> None:
    assert classify_task([]) is TaskKind.GENERATION


def test_only_the_last_user_message_counts() -> None:
    messages = [
        ChatMessage(Role.SYSTEM, "You are a security auditor hunting for vulnerabilities."),
        ChatMessage(Role.USER, "Explain how the budget ledger works."),
        ChatMessage(Role.ASSISTANT, "It reserves, commits and releases. Any bug reports?"),
        ChatMessage(Role.USER, "Now write pytest unit tests for it."),
        ChatMessage(Role.ASSISTANT, "Sure, here is the traceback-free plan."),
    ]

    assert classify_task(messages) is TaskKind.UNIT_TEST
    assert classify_task(messages[:3]) is TaskKind.EXPLAIN


def test_without_a_user_message_all_text_counts() -> None:
    messages = [
        ChatMessage(Role.SYSTEM, "Refactor what follows."),
        ChatMessage(Role.ASSISTANT, "Extract the helper first?"),
    ]

    assert classify_task(messages) is TaskKind.REFACTOR


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        ("It doesn\u2019t work", TaskKind.DEBUG),
        ("it doesnt work", TaskKind.DEBUG),
        ("please write unit-tests", TaskKind.UNIT_TEST),
        ("do a THREAT-MODEL", TaskKind.SECURITY_REVIEW),
        ("a stacktrace", TaskKind.DEBUG),
    ],
)
def test_spelling_variants_of_a_keyword_match(prompt: str, kind: TaskKind) -> None:
    assert classify_task(_user(prompt)) is kind


def test_the_longest_keyword_at_a_position_wins() -> None:
    # "what is" alone would make it EXPLAIN; "what is wrong" is DEBUG.
    assert classify_task(_user("What is wrong with this function?")) is TaskKind.DEBUG
    # "write" alone would make it GENERATION; "write tests" is UNIT_TEST.
    assert classify_task(_user("write tests")) is TaskKind.UNIT_TEST


def test_keywords_match_only_at_the_start_of_a_word() -> None:
    # "explanation" contains "plan" and "prefix" contains "fix".
    assert classify_task(_user("Give me an explanation of the prefix tree.")) is TaskKind.EXPLAIN
    assert classify_task(_user("a different approach")) is TaskKind.PLANNING  # "diff" must end


def test_a_huge_prompt_is_classified_from_its_tail() -> None:
    huge = "Check the security of this. " + "lorem ipsum dolor sit amet " * 40_000
    huge += "Please fix the crash."
    assert len(huge) > 1_000_000

    assert classify_task(_user(huge)) is TaskKind.DEBUG


# Keyword pieces, separators and odd characters, to exercise spelling variants.
_KEYWORD_FRAGMENTS = st.sampled_from(
    [
        *(" ", "\n", "-", "_", "'", "\u2019", ":", "\u3000", "\u00e9"),
        *("unit", "test", "doesn", "t work", "error", "stack", "trace", "what", "s wrong"),
        *("refactor", "clean", "up"),
    ]
)


@given(
    st.lists(
        st.builds(
            ChatMessage,
            role=st.sampled_from(Role),
            content=st.text() | st.lists(_KEYWORD_FRAGMENTS).map("".join),
        ),
        max_size=6,
    )
)
def test_any_messages_give_a_task_kind(messages: list[ChatMessage]) -> None:
    assert isinstance(classify_task(messages), TaskKind)


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        (
            "Refactor this module so parsing and validation are separate steps.\n"
            "```python\ndef parse(text):\n    raise ValueError(text)\n```",
            TaskKind.REFACTOR,
        ),
        (
            "Explain what this decorator does.\n```python\ntry:\n    x()\nexcept KeyError:\n"
            "    pass\n```",
            TaskKind.EXPLAIN,
        ),
        ("```\nTraceback (most recent call last):\nKeyError: 'x'\n```", TaskKind.DEBUG),
    ],
)
def test_code_pasted_in_fences_does_not_outvote_the_instruction(
    prompt: str, kind: TaskKind
) -> None:
    assert classify_task([ChatMessage(Role.USER, prompt)]) == kind
