"""`make bench`: faregate measured beside a bare grpc.aio pass-through (not a test).

Method. Five servers on 127.0.0.1, each its own process started by the bench:

- a fake OpenAI-compatible upstream (`upstream.py`, aiohttp, no artificial
  delays except for the model "slow");
- faregate itself (`faregate serve` on the config of `faregate_config.py`,
  state in memory);
- faregate on the same config with the shipped default state backend,
  sqlite, on a ledger file of its own in a temporary directory (so what the
  durable ledger costs is measured in the same rounds);
- the baseline (`passthrough.py`): the same `faregate.v1.RouterService` with
  no logic at all, forwarding to the upstream over one shared aiohttp session;
- faregate on its embedded default config, for the memory goal only.

The machine has two cores. The servers under test are pinned to core 0; the
upstream and the load generator (this process: raw grpc.aio stubs over one
channel per server) share core 1. Every load is a closed loop bounded in count
and time (`load.py`). The figures (`rounds.py`):

- CPU per unary Route and per relayed stream token: the server process's own
  utime+stime (/proc/PID/stat, all threads) over a batch, divided by the
  requests, or by the delta messages received. This is the stable figure. It
  is taken at concurrency 1 (each request pays its wake-ups alone) and 16
  (the server core is saturated and wake-ups are shared).
- CPU per unary Route with 5 tools (at concurrency 16) and per streamed
  tool call: the same figure for a request that defines five tools
  (`agent_tools.py`, JSON Schemas of a few hundred bytes each), answered by
  a tool call, whole or with its arguments in 20 fragments; the
  pass-through maps the tools and relays the call too. Shown beside the
  plain text rows, with no goal. `python -m bench --tool-calls [--rounds N]`
  runs this phase alone, on faregate and the pass-through.
- Max unary requests/s: a closed loop at concurrency 64 for a fixed time; the
  busy share of each core is printed beside it, so a run where the load side
  rather than the server was the bottleneck shows as such.
- Added latency: p50/p99 end-to-end through a server minus the same
  percentile of calling the upstream directly with aiohttp at the same
  concurrency, in the same round.
- Peak RSS: VmHWM from /proc/PID/status.
- Overload (`overload.py`): a burst at a model with a tiny pool; how many are
  rejected with UNAVAILABLE / POOL_SATURATED and how fast.

Measurements are interleaved: each round runs every phase against both
faregates, the pass-through and (for latency) the direct baseline back to
back, so a comparison is between neighbours in time. The server order changes
every round (`rounds.round_order`: ABC CBA BCA ACB CAB BAC over the six
rounds), so each server takes each place, and follows each other server,
equally often. Each figure is the median over rounds, printed with its range;
each faregate/pass-through comparison (memory state, and sqlite state) is the
median of the per-round ratios or differences. The report also says how
much CPU other processes used meanwhile, since that is what makes a run
noisy. Goals are marked PASS/FAIL but the bench exits 0 either way: it
reports, it does not gate.

Six more sections follow, each runnable alone (the first three and the last
in this process):

- Routing simulation (`routing_sim.py`, `python -m bench.routing_sim`):
  10,000 requests of a coding agent's mix over three sim models sharing one
  limit pool, served always-best, always-cheapest and by faregate's scoring,
  on a fake clock; cost, quality against per-task floors, rejections and
  modelled latency, side by side.
- Hedging (`hedging.py`, `python -m bench.hedging`): StreamRoute through
  the gRPC server to a primary with a heavy first-token tail, hedging off, at
  a fixed delay and at the primary's p95; time to first token at the client,
  hedges, and what they cost.
- State backends (`state.py`, `python -m bench.state`): reserve +
  commit with its ledger record per backend (memory, sqlite, and redis on a
  redis-server started for it), at concurrency 1 and 64 (where the SQLite
  ledger's group commit shares transactions).
- Telemetry (`telemetry.py`, `python -m bench.telemetry`): faregate's
  CPU per Route and per stream with telemetry off, metrics only, the
  default (metrics and request logs) and everything with tracing, as a
  ratio to off.
- Admission control (`admission.py`, `python -m bench.admission`):
  servers of its own; 10x overload of `server.max_concurrent_calls`, then
  streams past CPU saturation with new calls sent once the loop lags; how
  many are refused SERVER_OVERLOADED, by which guard, and how fast, from
  the request log (server side) and from the callers.
- Prompt caching (`prompt_cache.py`, `python -m bench.prompt_cache`): a
  20-turn agent tool loop with a 10,000-token system prompt through the
  gRPC server to a fake Anthropic that emulates the prompt cache, with the
  route's `cache_prompt` off, on for five minutes and for an hour; the cost
  faregate reports beside the fake's usage priced by hand, and the saving.

Run on their own, not by `make bench`:
- `python -m bench.slow_readers`: faregate's peak RSS while 200 slow
  stream readers (or `--readers 50 --events 32000`, 8 MB streams) read one
  message per 100 ms.
- `python -m bench.sse_parse`: what the SSE parser costs per event.
- `bench/ab.py OLD NEW ROUNDS`, run from the OLD checkout: two
  checkouts' faregates side by side with the pass-through, interleaved, for
  the CPU per Route, per streamed token and per tool call a change costs.

Nothing here is collected by pytest, and importing any module has no side
effects.
"""
