"""Acquire+release pairs per second against Redis, at several pool sizes and strategies.

The bars (from the issues): at 10,000 sessions at least half the throughput at 10 (acquire must not
scan the pool); exactly one Redis round trip per acquire and one per release; Redis time (INFO
commandstats) at most 30 us per script call and 70 us per pair, at every size.

How it measures, and why:

* 16 clients (``--clients``) are asyncio tasks spread over ``--processes`` worker processes, each
  with its own store client and Pool. One Python process would be the bottleneck long before
  Redis is, and would hide how the scripts scale.
* Each (strategy, pool size) gets a fresh pool and a warm-up (the library of the scripts is loaded
  there on the first "Function not found", and every connection opened). Its ``--duration``
  seconds are measured in ``--rounds`` slices, the sizes of a strategy taking turns, so a change
  in the machine's load during the run falls on every size alike. Each slice starts with
  ``CONFIG RESETSTAT``; all workers start and stop it at the same monotonic instant.
* Round trips, counted by Redis: ``INFO commandstats`` after the run. Commands a script makes
  count there too, so a command name some script calls is counted as the script's; any other name
  (a HELLO of a new connection, a PING health check, FUNCTION LOAD) is a round trip of the
  workload and reported as "other". Then an audit of ``--audit-pairs`` pairs per client
  runs with ``SLOWLOG`` logging every command: it tells a client's commands from a script's
  (address ``?:0``) whatever their names, attributes each FCALL to acquire or release by the
  function's name, and records the Redis time of each (in ``--json`` only: SLOWLOG's own logging of
  the script's commands inflates it).
* Redis-side cost: the commandstats time of FCALL (the whole script, inner commands included) per
  call and per pair, the share of it in the commands the scripts ran, the Redis CPU (``INFO
  cpu``) per pair beside it (commandstats is wall time and swells when the cores are shared; CPU
  time does not), and the number of commands the scripts ran per pair. Client throughput on a
  small machine mostly shows Python; these show what a request costs Redis and whether a
  script's work grows with the pool.
* ``--baseline REF``: another commit's broker (``baseline.py``), each of its rows measured right
  after this code's of the same strategy, on the same server: a before/after in one run. Its
  scripts may be EVALSHA (before the function library); both count as script calls.

* Tiers and quotas: each strategy is measured twice in the same run, as configured by default
  and (row ``<strategy>+tiers``) with every session in one of three priority tiers, an ``rpm``
  and a ``tpm`` on each (too large to run out) and the units of each pair reported at release,
  so the bars are checked with those features on. ``--no-tiers`` measures the plain pools only.

Run from the repository root with the project installed: ``python -m bench.acquire_release``.
"""
