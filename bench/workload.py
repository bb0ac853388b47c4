"""A coding agent's request mix for the routing simulation: 30 prompt templates.

Each template is a natural request of one kind of task (three per `TaskKind`),
written the way an agent or a developer would ask, not tuned to faregate's
keyword classifier: the simulation checks the classifier as much as the
scoring. A request is a template with its blanks filled, plus context of a
varied size (none, a few lines, or several files of code, a diff or a
traceback) placed before or after the instruction, as agents do both. The
kind a request was written as is its true task; faregate is never told it.

`requests(n, seed)` is a pure function of its arguments, so every policy of
the simulation sees the very same requests in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from faregate_server.domain import TaskKind

_ENTITIES = ("order", "invoice", "customer", "shipment", "refund", "subscription")


@dataclass(frozen=True, slots=True)
class Template:
    task: TaskKind
    text: str
    """The instruction; `{entity}` is filled with a resource name."""
    context: str
    """What is attached: "", "code", "diff" or "traceback"."""
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class SimRequest:
    task: TaskKind
    """The kind the request was written as (never sent to faregate)."""
    prompt: str
    max_output_tokens: int


TEMPLATES: tuple[Template, ...] = (
    Template(
        TaskKind.BOILERPLATE,
        "Give me a dataclass for a {entity} with id, customer_id, line items, created_at "
        "and status, plus a from_dict constructor.",
        "",
        512,
    ),
    Template(
        TaskKind.BOILERPLATE,
        "Scaffold a small FastAPI service with a /healthz endpoint, a settings module "
        "that reads environment variables, and a Dockerfile.",
        "",
        1024,
    ),
    Template(
        TaskKind.BOILERPLATE,
        "Add the usual CRUD endpoints for the {entity} resource, following the same "
        "pattern as the existing ones below.",
        "code",
        1024,
    ),
    Template(
        TaskKind.GENERATION,
        "Implement a function that merges overlapping time intervals and returns them "
        "sorted by start time.",
        "",
        512,
    ),
    Template(
        TaskKind.GENERATION,
        "Add a command `shopctl export` that streams every {entity} to a CSV file, with "
        "a --since option that takes an ISO date.",
        "code",
        1024,
    ),
    Template(
        TaskKind.GENERATION,
        "Wrap the HTTP calls in this client with exponential backoff and jitter, at most "
        "five attempts, and make the delays configurable.",
        "code",
        1024,
    ),
    Template(
        TaskKind.REFACTOR,
        "Refactor this module so parsing and validation are separate steps; the public "
        "functions must keep their signatures.",
        "code",
        2048,
    ),
    Template(
        TaskKind.REFACTOR,
        "This function has grown too long. Split the pricing rules into small functions "
        "and simplify the control flow without changing behaviour.",
        "code",
        2048,
    ),
    Template(
        TaskKind.REFACTOR,
        "Rename `process` to `apply_discounts` everywhere and remove the duplicated "
        "rounding logic.",
        "code",
        1024,
    ),
    Template(
        TaskKind.REVIEW,
        "Review this diff and point out anything that could break existing callers.",
        "diff",
        1024,
    ),
    Template(
        TaskKind.REVIEW,
        "Can you give me feedback on this change before I merge it? Mostly naming and "
        "whether the edge cases are handled.",
        "diff",
        1024,
    ),
    Template(
        TaskKind.REVIEW,
        "Could you look over my change to the {entity} cache? I'd like a second pair of "
        "eyes on the locking.",
        "diff",
        1024,
    ),
    Template(
        TaskKind.UNIT_TEST,
        "Write pytest tests for the function below: empty input, duplicates, and unsorted input.",
        "code",
        1024,
    ),
    Template(
        TaskKind.UNIT_TEST,
        "Add unit tests for the {entity} repository, with a fixture for the database session.",
        "code",
        1024,
    ),
    Template(
        TaskKind.UNIT_TEST,
        "Our coverage of this parser is poor. Cover the remaining branches; mock the file system.",
        "code",
        1024,
    ),
    Template(
        TaskKind.PLANNING,
        "We need to move the {entity} code out of the monolith into its own service. "
        "Propose a migration plan with milestones and the main risks.",
        "",
        2048,
    ),
    Template(
        TaskKind.PLANNING,
        "How should we model multi-tenant feature flags? Compare keeping them in "
        "Postgres with keeping them in Redis: pros and cons, and what you'd pick.",
        "",
        2048,
    ),
    Template(
        TaskKind.PLANNING,
        "Break down the work to add offline support to the mobile app into tasks, in "
        "the order you would do them.",
        "",
        2048,
    ),
    Template(
        TaskKind.ORCHESTRATION,
        "You are the lead agent. Split this job into subtasks for the sub-agents "
        "(schema change, data backfill, API update, docs) and return the dispatch "
        "order as JSON.",
        "",
        1024,
    ),
    Template(
        TaskKind.ORCHESTRATION,
        "Three worker agents returned the edits below. Merge their results, settle "
        "the conflicts between them, and choose the next tool call.",
        "diff",
        1024,
    ),
    Template(
        TaskKind.ORCHESTRATION,
        "Run the release workflow: call the changelog tool, then the version bump, "
        "then open the merge request; hand off to the on-call agent if a step stops.",
        "",
        1024,
    ),
    Template(
        TaskKind.SECURITY_REVIEW,
        "Audit this login handler: session fixation, timing attacks on the password "
        "comparison, missing rate limits.",
        "code",
        2048,
    ),
    Template(
        TaskKind.SECURITY_REVIEW,
        "Check this endpoint for SQL injection and SSRF; the url parameter is fetched "
        "on the server.",
        "code",
        2048,
    ),
    Template(
        TaskKind.SECURITY_REVIEW,
        "Is it safe to render user-supplied Markdown like this? Look for XSS and "
        "anything else an attacker could abuse.",
        "code",
        2048,
    ),
    Template(
        TaskKind.DEBUG,
        "This started after we upgraded the HTTP client. What's going on?",
        "traceback",
        1024,
    ),
    Template(
        TaskKind.DEBUG,
        "The nightly {entity} sync hangs forever at 'waiting for lock' about once a "
        "week. Here's the worker loop; where can it get stuck?",
        "code",
        1024,
    ),
    Template(
        TaskKind.DEBUG,
        "Some {entity} totals are off by one cent. Here is the rounding code; why?",
        "code",
        1024,
    ),
    Template(
        TaskKind.EXPLAIN,
        "Explain what this decorator does and why it uses functools.wraps.",
        "code",
        512,
    ),
    Template(
        TaskKind.EXPLAIN,
        "What is the difference between asyncio.gather and asyncio.TaskGroup when one "
        "of the tasks raises?",
        "",
        512,
    ),
    Template(
        TaskKind.EXPLAIN,
        "Walk me through how this regex matches an email address.",
        "code",
        512,
    ),
)

TASK_MIX: dict[TaskKind, int] = {
    # Percent of requests by kind: a coding agent's day, heavy on writing code,
    # tests and debugging, light on planning and security reviews.
    TaskKind.BOILERPLATE: 10,
    TaskKind.GENERATION: 16,
    TaskKind.REFACTOR: 10,
    TaskKind.REVIEW: 9,
    TaskKind.UNIT_TEST: 12,
    TaskKind.PLANNING: 7,
    TaskKind.ORCHESTRATION: 6,
    TaskKind.SECURITY_REVIEW: 4,
    TaskKind.DEBUG: 14,
    TaskKind.EXPLAIN: 12,
}

_FILES: tuple[tuple[str, str], ...] = (
    (
        "orders/pricing.py",
        """\
@dataclass(frozen=True)
class LineItem:
    sku: str
    quantity: int
    unit_price_cents: int


def subtotal_cents(items: list[LineItem]) -> int:
    return sum(item.quantity * item.unit_price_cents for item in items)


def apply_discounts(order: dict, rules: list[dict]) -> int:
    total = subtotal_cents(order["items"])
    for rule in rules:
        if rule["kind"] == "percent":
            total -= round(total * rule["value"] / 100)
        elif rule["kind"] == "fixed" and total > rule["min_total"]:
            total -= rule["value"]
    return max(total, 0)
""",
    ),
    (
        "orders/store.py",
        """\
async def load_order(db: Connection, order_id: str) -> dict | None:
    row = await db.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)
    if row is None:
        return None
    items = await db.fetch("SELECT * FROM line_items WHERE order_id = $1", order_id)
    return {"id": row["id"], "status": row["status"], "items": [LineItem(**i) for i in items]}


async def save_order(db: Connection, order: dict) -> None:
    async with db.transaction():
        await db.execute(
            "INSERT INTO orders (id, status) VALUES ($1, $2) "
            "ON CONFLICT (id) DO UPDATE SET status = $2",
            order["id"],
            order["status"],
        )
        await db.executemany(
            "INSERT INTO line_items (order_id, sku, quantity) VALUES ($1, $2, $3)",
            [(order["id"], i.sku, i.quantity) for i in order["items"]],
        )
""",
    ),
    (
        "orders/amounts.py",
        """\
def parse_amount(text: str) -> int:
    whole, _, cents = text.strip().partition(".")
    if not whole.isdigit() or (cents and not cents.isdigit()):
        raise ValueError(f"not an amount: {text!r}")
    return int(whole) * 100 + int((cents + "00")[:2])


def format_amount(cents: int, currency: str = "EUR") -> str:
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d} {currency}"
""",
    ),
    (
        "orders/cache.py",
        """\
class OrderCache:
    def __init__(self, ttl_s: float = 30.0) -> None:
        self._entries: dict[str, tuple[float, dict]] = {}
        self._lock = asyncio.Lock()
        self._ttl_s = ttl_s

    async def get(self, key: str, now_s: float) -> dict | None:
        async with self._lock:
            entry = self._entries.get(key)
            if entry is None or now_s - entry[0] > self._ttl_s:
                return None
            return entry[1]

    async def put(self, key: str, value: dict, now_s: float) -> None:
        async with self._lock:
            self._entries[key] = (now_s, value)
""",
    ),
    (
        "orders/client.py",
        """\
class WarehouseClient:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def stock(self, sku: str) -> int:
        response = await self._http.get(f"/stock/{sku}")
        response.raise_for_status()
        return int(response.json()["available"])

    async def reserve(self, sku: str, quantity: int) -> str:
        response = await self._http.post("/reservations", json={"sku": sku, "qty": quantity})
        response.raise_for_status()
        return str(response.json()["reservation_id"])

    async def aclose(self) -> None:
        await self._http.aclose()
""",
    ),
)

_DIFF_HEADER = "--- a/orders/pricing.py\n+++ b/orders/pricing.py\n@@ -12,9 +12,11 @@\n"

_TRACEBACK = """\
Traceback (most recent call last):
  File "/srv/app/orders/sync.py", line 88, in run
    order = await load_order(db, order_id)
  File "/srv/app/orders/store.py", line 41, in load_order
    items = await db.fetch("SELECT * FROM line_items WHERE order_id = $1", order_id)
  File "/srv/app/.venv/lib/python3.11/site-packages/httpx/_client.py", line 1617, in send
    response = await self._send_handling_auth(request)
httpx.RemoteProtocolError: Server disconnected without sending a response.
"""


def _context_lines(rng: random.Random) -> int:
    """How many lines of context: mostly short, sometimes several files."""
    draw = rng.random()
    if draw < 0.35:
        return rng.randint(8, 25)
    if draw < 0.80:
        return rng.randint(25, 60)
    if draw < 0.95:
        return rng.randint(60, 150)
    return rng.randint(150, 300)


def _code(lines: int, rng: random.Random) -> str:
    """About `lines` lines from one file, or from several for a long context."""
    chosen: list[str] = []
    while len(chosen) < lines:
        for path, text in rng.sample(_FILES, len(_FILES)):
            chosen += [f"# {path}", *text.splitlines()]
            if len(chosen) >= lines:
                break
    return "```python\n" + "\n".join(chosen[:lines]) + "\n```"


def _context(kind: str, rng: random.Random) -> str:
    if kind == "code":
        return _code(_context_lines(rng), rng)
    if kind == "diff":
        lines = _code(_context_lines(rng), rng).splitlines()[1:-1]
        marked = [rng.choice(("+", "-", " ")) + line for line in lines]
        return "```diff\n" + _DIFF_HEADER + "\n".join(marked) + "\n```"
    if kind == "traceback":
        return _TRACEBACK + "\n" + _code(rng.randint(8, 40), rng)
    return ""


def _prompt(template: Template, rng: random.Random) -> str:
    instruction = template.text.format(entity=rng.choice(_ENTITIES))
    context = _context(template.context, rng)
    if not context:
        return instruction
    if rng.random() < 0.5:
        return f"{instruction}\n\n{context}"
    return f"{context}\n\n{instruction}"


def requests(n: int, seed: int) -> list[SimRequest]:
    """`n` requests drawn from the mix, reproducibly."""
    rng = random.Random(seed)
    kinds = list(TASK_MIX)
    weights = list(TASK_MIX.values())
    by_kind = {kind: [t for t in TEMPLATES if t.task is kind] for kind in kinds}
    chosen = []
    for kind in rng.choices(kinds, weights=weights, k=n):
        template = rng.choice(by_kind[kind])
        chosen.append(SimRequest(kind, _prompt(template, rng), template.max_output_tokens))
    return chosen
