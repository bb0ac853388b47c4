"""Guesses what kind of coding task a request is, for weighting model quality.

When an agent names no task, the router calls `classify_task` and weights each
candidate's quality by the task's difficulty: quality ** (1 + task_weight *
difficulty), with `routing.task_weight` from the config,
so a hard task punishes a weak model far more than boilerplate does.

How a request is classified:

- The text is the last USER message; with no user message, all messages'
  text joined in order. Only its last `_WINDOW_CHARS` characters are read,
  lower-cased, so the cost is bounded however large the prompt.
- One compiled regex finds keyword hits. A keyword matches at the start of a
  word; it must end the word too unless it ends in `*` ("refactor*" matches
  the start of "refactoring"); a space in it also matches "-", "_", other
  whitespace or nothing ("unit test*" matches "unit-tests" and "unittest");
  an apostrophe may be curly or missing. Hits never overlap, and at one position the longest
  keyword wins, so "write tests" counts once, for UNIT_TEST, not also as
  GENERATION's "write".
- Each hit adds its weight (1 weak, 2 clear, 3 decisive) to its kind; the
  highest total wins.
- Ties go to the harder or riskier kind, in `_PRIORITY` order: security_review
  > debug > planning > orchestration > refactor > review > unit_test > explain
  > generation > boilerplate. A complex prompt (3,000 characters or more,
  two or more fenced code blocks, or 50 or more lines in the window) moves
  planning, orchestration and refactor up to just below security_review, in
  `_COMPLEX_PRIORITY`; so complexity only breaks ties, never outweighs a hit.
- A prompt with no hits is GENERATION, or PLANNING when it is complex.

Invariants: the result is a pure function of the messages, always a
`TaskKind`, and never raises for any text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from faregate_server.domain import ChatMessage, Role, TaskKind

TASK_DIFFICULTY: Mapping[TaskKind, float] = MappingProxyType(
    {
        # How much the task punishes a weak model, in [0, 1]: 0 means any model
        # does it well, 1 means a miss is costly and hard to notice. The router
        # uses quality ** (1 + task_weight * difficulty) as the task-weighted quality.
        TaskKind.SECURITY_REVIEW: 1.0,  # a missed vulnerability ships silently
        TaskKind.PLANNING: 0.9,  # a bad plan wastes every step after it
        TaskKind.ORCHESTRATION: 0.8,  # errors compound across sub-agents
        TaskKind.DEBUG: 0.7,  # needs real reasoning about behaviour
        TaskKind.REFACTOR: 0.6,  # must preserve behaviour across edits
        TaskKind.REVIEW: 0.6,  # shallow reviews look plausible
        TaskKind.UNIT_TEST: 0.4,  # tests check themselves when run
        TaskKind.GENERATION: 0.4,  # usually compiled and run straight away
        TaskKind.EXPLAIN: 0.3,  # the reader judges the answer
        TaskKind.BOILERPLATE: 0.1,  # rote, and any model knows the patterns
    }
)

_WINDOW_CHARS = 4_000
# A fenced code block, or an unclosed fence running to the end of the window.
_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_LONG_PROMPT_CHARS = 3_000
_MANY_FENCES = 4  # two fenced code blocks
_MANY_NEWLINES = 50

_PRIORITY: tuple[TaskKind, ...] = (
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
_COMPLEX_PRIORITY: tuple[TaskKind, ...] = (
    TaskKind.SECURITY_REVIEW,
    TaskKind.PLANNING,
    TaskKind.ORCHESTRATION,
    TaskKind.REFACTOR,
    TaskKind.DEBUG,
    TaskKind.REVIEW,
    TaskKind.UNIT_TEST,
    TaskKind.EXPLAIN,
    TaskKind.GENERATION,
    TaskKind.BOILERPLATE,
)

_KEYWORDS: Mapping[TaskKind, Mapping[str, int]] = {
    TaskKind.SECURITY_REVIEW: {
        "security": 3,
        "secure": 2,
        "vulnerab*": 3,
        "cve*": 3,
        "exploit*": 3,
        "injection": 3,
        "sql injection": 3,
        "xss": 3,
        "csrf": 3,
        "ssrf": 3,
        "owasp": 3,
        "auth bypass": 3,
        "threat model*": 3,
        "privilege escalation": 3,
        "pentest*": 3,
        "sanitiz*": 2,
        "sanitis*": 2,
        "audit*": 2,
        "secrets": 2,
        "attacker*": 2,
        "malicious": 2,
    },
    TaskKind.UNIT_TEST: {
        "unit test*": 3,
        "pytest": 3,
        "unittest": 3,
        "jest": 3,
        "tdd": 3,
        "test case*": 3,
        "write tests": 3,
        "add tests": 3,
        "test suite": 2,
        "test coverage": 3,
        "coverage": 2,
        "mock*": 2,
        "fixture*": 2,
        "edge cases": 1,
        "assert*": 1,
        "test": 1,
        "tests": 1,
        "testing": 1,
    },
    TaskKind.DEBUG: {
        "traceback": 3,
        "stack trace*": 3,
        "stacktrace*": 3,
        "error:": 3,
        "debug*": 3,
        "segfault*": 3,
        "doesn't work": 3,
        "does not work": 3,
        "not working": 3,
        "what's wrong": 3,
        "what is wrong": 3,
        "keyerror": 3,
        "typeerror": 3,
        "valueerror": 3,
        "attributeerror": 3,
        "indexerror": 3,
        "importerror": 3,
        "nullpointerexception": 3,
        "race condition*": 3,
        "deadlock*": 3,
        "memory leak*": 3,
        "exception*": 2,
        "bug*": 2,
        "crash*": 2,
        "fix*": 2,
        "fail": 2,
        "fails": 2,
        "failing": 2,
        "failed": 2,
        "failure*": 2,
        "broken": 2,
        "regression": 2,
        "hangs": 2,
        "error*": 1,
    },
    TaskKind.REFACTOR: {
        "refactor*": 3,
        "restructur*": 3,
        "clean up": 2,
        "clean it up": 2,
        "cleanup": 2,
        "rename*": 2,
        "extract*": 2,
        "simplif*": 2,
        "reorganiz*": 2,
        "reorganis*": 2,
        "decoupl*": 2,
        "deduplicat*": 2,
        "modulari*": 2,
        "optimi*": 2,
        "speed up": 2,
        "tech debt": 2,
        "technical debt": 2,
        "dependency injection": 1,
        "readab*": 1,
        "performance": 1,
        "convert*": 1,
        "tidy": 1,
    },
    TaskKind.REVIEW: {
        "review*": 3,
        "critique*": 3,
        "feedback on": 2,
        "pull request*": 2,
        "diff": 2,
        "look over": 2,
        "is this correct": 2,
        "any issues": 2,
        "thread safe*": 2,
        "second pair of eyes": 2,
        "pr": 1,
        "lgtm": 1,
        "nit*": 1,
    },
    TaskKind.PLANNING: {
        "architect*": 3,
        "roadmap*": 3,
        "trade off*": 3,
        "pros and cons": 3,
        "plan*": 2,
        "design*": 2,
        "break down": 2,
        "break it down": 2,
        "break this down": 2,
        "breakdown": 2,
        "approach*": 2,
        "strateg*": 2,
        "milestone*": 2,
        "high level": 2,
        "rfc": 2,
    },
    TaskKind.ORCHESTRATION: {
        "orchestrat*": 3,
        "delegat*": 3,
        "subtask*": 3,
        "sub task*": 3,
        "multi agent*": 3,
        "tool call*": 3,
        "sub agent*": 3,
        "agent*": 2,
        "workflow*": 2,
        "pipeline*": 2,
        "coordinat*": 2,
        "dispatch*": 2,
        "fan out": 2,
        "hand off": 2,
        "handoff*": 2,
        "parallel*": 1,
    },
    TaskKind.EXPLAIN: {
        "explain*": 3,
        "explanation": 3,
        "walk me through": 3,
        "help me understand": 3,
        "what does": 2,
        "why does": 2,
        "why is": 2,
        "how does": 2,
        "how do": 1,
        "what is": 2,
        "what are": 2,
        "difference between": 2,
        "docstring*": 2,
        "document*": 1,
        "meaning of": 1,
    },
    TaskKind.GENERATION: {
        "implement*": 2,
        "add a function": 2,
        "function that": 2,
        "a script": 2,
        "write*": 1,
        "create*": 1,
        "generate*": 1,
        "build*": 1,
        "make a": 1,
        "add a": 1,
        "feature*": 1,
        "translate": 1,
        "port": 1,
    },
    TaskKind.BOILERPLATE: {
        "boilerplate": 3,
        "scaffold*": 3,
        "getter*": 3,
        "setter*": 3,
        "crud": 3,
        "skeleton": 2,
        "template*": 2,
        "stub*": 2,
        "dataclass*": 2,
        "config file*": 2,
        "dockerfile": 2,
        "gitignore": 2,
        "pyproject": 2,
        "hello world": 2,
        "starter": 1,
        "repetitive": 1,
    },
}


_Trie = dict[str, "_Trie"]

_SEPARATOR = r"[ \t\r\n_-]*"
_WORD_END = r"(?!\w)"
_PREFIX_END = ""
_APOSTROPHE = "['\u2019]?"
_UNSPELLED = str.maketrans("", "", " \t\r\n_-'\u2019")


def _atoms(keyword: str) -> list[str]:
    body = keyword.removesuffix("*")
    atoms = [
        _SEPARATOR if char == " " else _APOSTROPHE if char == "'" else re.escape(char)
        for char in body
    ]
    whole_word = not keyword.endswith("*") and body[-1].isalnum()
    atoms.append(_WORD_END if whole_word else _PREFIX_END)
    return atoms


def _trie_regex(trie: _Trie) -> str:
    # Continuations come before the ends of keywords, so the longest one wins:
    # "what is wrong" before "what is".
    ends = (_WORD_END, _PREFIX_END)
    branches = [
        atom + _trie_regex(child) for atom, child in sorted(trie.items()) if atom not in ends
    ]
    branches += [end for end in ends if end in trie]
    if len(branches) == 1:
        return branches[0]
    return "(?:" + "|".join(branches) + ")"


def _compile() -> tuple[re.Pattern[str], dict[str, tuple[TaskKind, int]]]:
    # The keywords go into a trie, so at each word start the regex engine
    # compares one character against a few branches instead of trying all
    # ~150 keywords in turn; that makes it about four times faster. A match
    # is attributed by its text, not by capture groups, which would cost
    # more than the match itself.
    trie: _Trie = {}
    hits: dict[str, tuple[TaskKind, int]] = {}
    for kind, table in _KEYWORDS.items():
        for keyword, weight in table.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9 ':]*\*?", keyword):
                raise ValueError(f"bad keyword: {keyword!r}")
            node = trie
            for atom in _atoms(keyword):
                node = node.setdefault(atom, {})
            spelling = keyword.removesuffix("*")
            for key in (spelling, spelling.translate(_UNSPELLED)):
                if hits.setdefault(key, (kind, weight)) != (kind, weight):
                    raise ValueError(f"keyword {keyword!r} clashes with another")
    return re.compile(r"\b" + _trie_regex(trie)), hits


_PATTERN, _HITS = _compile()
_KINDS = tuple(TaskKind)  # iterating the enum itself is several times slower


def classify_task(messages: Sequence[ChatMessage]) -> TaskKind:
    """Guesses the task kind of a coding agent's request.

    Args:
        messages: The conversation, oldest first; may be empty.

    Returns:
        The kind with the highest keyword score, ties broken as the module
        docstring describes; GENERATION when nothing matches in a short prompt.
    """
    text = _chosen_text(messages)
    window = text[-_WINDOW_CHARS:].lower()
    # The instruction is the prose: code pasted in fences (an exception name
    # in a snippet to refactor) must not outvote it. Only when the prose says
    # nothing do the fenced parts count.
    scores = _scores(_FENCED.sub(" ", window)) if "```" in window else _scores(window)
    if not any(scores.values()) and "```" in window:
        scores = _scores(window)
    complex_prompt = (
        len(text) >= _LONG_PROMPT_CHARS
        or window.count("```") >= _MANY_FENCES
        or window.count("\n") >= _MANY_NEWLINES
    )
    best = max(scores.values())
    if best == 0:
        return TaskKind.PLANNING if complex_prompt else TaskKind.GENERATION
    priority = _COMPLEX_PRIORITY if complex_prompt else _PRIORITY
    return next(kind for kind in priority if scores[kind] == best)


def _scores(text: str) -> dict[TaskKind, int]:
    scores = dict.fromkeys(_KINDS, 0)
    for found in _PATTERN.findall(text):
        # A prefix keyword matches without its word's ending ("refactor" in
        # "refactoring"), so the text is the keyword as written, or else the
        # keyword with other separators or apostrophes, which these remove.
        hit = _HITS.get(found) or _HITS[found.translate(_UNSPELLED)]
        scores[hit[0]] += hit[1]
    return scores


def _chosen_text(messages: Sequence[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == Role.USER:
            return message.content
    # No user message: all the text, but built from the end and only as far
    # back as the window reaches, so a long history costs nothing extra.
    parts: list[str] = []
    size = 0
    for message in reversed(messages):
        parts.append(message.content)
        size += len(message.content) + 1
        if size >= _WINDOW_CHARS:
            break
    return "\n".join(reversed(parts))
