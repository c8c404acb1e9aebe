"""dc_test: drive a cache with random operations and check every answer.

The C tool's options and messages, with its single-dash flags (``-connect UNIX:/x``)
or long ones (``--connect UNIX:/x``, ``--connect=UNIX:/x``).  It makes ``-sessions``
random sessions, runs ``-ops`` random ADD/REMOVE/GET/HAVE operations on them one at a
time, stops at the first answer its model (:mod:`distcache.cachemodel`) says is
impossible, and exits 0 when every answer was right, 1 otherwise.  Beyond the C tool it
knows about expiry and the cache's size limit (``-capacity``), prints ops/s and latency
percentiles, and shows a progress bar when its output is a terminal.
"""

from __future__ import annotations

import random
import sys
import time
from typing import IO, List, NamedTuple, Optional, Sequence

from distcache import wire
from distcache.blocking import Mode, SessionCache
from distcache.cachemodel import CacheModel, Session, Surprise
from distcache.figures import latency_line, rate
from distcache.replies import CacheError

USAGE = """\
Usage: dc_test [options]     where 'options' are from;
  -connect <addr>  (connect to server at address 'addr')
  -progress <num>  (report transaction count every 'num' operations)
  -sessions <num>  (create 'num' sessions to use for testing, def: 10)
  -datamin <num>   (each session's data must be at least <num> bytes, def: 50)
  -datamax <num>   (each session's data must be at most <num> bytes, def: 2100)
  -timeout <secs>  (add sessions with a timeout of 'secs', def: 60)
  -timevar <secs>  (randomly offset '-timeout' +/- 'secs', def: 5)
  -ops <num>       (run <num> random tests, def: 10 * ('sessions')^2)
  -persistent      (use a persistent connection for all operations)
  -capacity <num>  (the cache holds at most 'num' sessions, 0 = no limit, def: 512)
  -seed <num>      (seed the random choices, to repeat a run)
  -version         (print the version and exit)
  -<h|help|?>      (display this usage message)
Every flag may also be written --flag or --flag=value.
Eg. dc_test -connect UNIX:/tmp/scache -sessions 20 -persistent
"""

MAX_OPS = 1000000
MAX_TIMEOUT = 3600
MAX_PROGRESS = 1000000
MAX_SESSIONS = 65536
MAX_DATA = wire.MESSAGE_MAX - 8 - 63
ID_MIN, ID_MAX = 10, 63

_VALUED = ("connect", "progress", "sessions", "datamin", "datamax", "timeout", "timevar",
           "ops", "capacity", "seed")


class UsageError(Exception):
    pass


class Settings(NamedTuple):
    connect: str
    sessions: int = 10
    datamin: int = 50
    datamax: int = 2100
    timeout: float = 60.0
    timevar: float = 5.0
    ops: int = 1000
    progress: int = 0
    persistent: bool = False
    capacity: int = 512
    seed: Optional[int] = None


def _number(name: str, text: str, kind=int, lo=0, hi=None):
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"-{name} given an invalid argument")
    if value < lo or (hi is not None and value > hi):
        raise UsageError(f"-{name} given an invalid argument")
    return value


def parse_args(argv: Sequence[str]) -> Optional[Settings]:
    """Settings from a command line; None when help was asked for."""
    given = {}
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "-help", "-?", "--help"):
            return None
        name, eq, inline = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or (eq and not arg.startswith("--")):
            raise UsageError(f'"{arg}" not recognised')
        if name == "persistent" and not eq:
            given["persistent"] = True
        elif name in _VALUED:
            if eq:
                given[name] = inline
            elif i < len(args):
                given[name] = args[i]
                i += 1
            else:
                raise UsageError(f"-{name} requires an argument")
        else:
            raise UsageError(f'"{arg}" not recognised')
    if "connect" not in given:
        raise UsageError("must provide -connect")
    sessions = _number("sessions", given.get("sessions", "10"), lo=1, hi=MAX_SESSIONS)
    timeout = _number("timeout", given.get("timeout", "60"), float, 0, MAX_TIMEOUT)
    timevar = _number("timevar", given.get("timevar", "5"), float, 0, MAX_TIMEOUT)
    if timevar >= timeout:
        raise UsageError("-timevar must be strictly smaller than -timeout")
    datamin = _number("datamin", given.get("datamin", "50"), hi=MAX_DATA)
    datamax = _number("datamax", given.get("datamax", "2100"), hi=MAX_DATA)
    if datamin < 4:
        raise UsageError("-datamin should be at least 4")
    if datamax < datamin:
        raise UsageError("-datamax should be at least -datamin")
    ops = (_number("ops", given["ops"], hi=MAX_OPS) if "ops" in given
           else 10 * sessions * sessions)
    return Settings(
        connect=given["connect"], sessions=sessions, datamin=datamin, datamax=datamax,
        timeout=timeout, timevar=timevar, ops=ops,
        progress=_number("progress", given.get("progress", "0"), hi=MAX_PROGRESS),
        persistent=bool(given.get("persistent")),
        capacity=_number("capacity", given.get("capacity", "512")),
        seed=_number("seed", given["seed"]) if "seed" in given else None)


class ProgressBar:
    """A one-line bar redrawn at most ten times a second; only on a terminal."""

    WIDTH = 30

    def __init__(self, out: IO[str], total: int):
        self._out = out
        self._total = max(total, 1)
        self._start = time.monotonic()
        self._drawn = 0.0
        self.visible = False

    def update(self, done: int, now: float) -> None:
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        filled = self.WIDTH * done // self._total
        speed = rate(done, now - self._start)
        self._out.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                        f"{100 * done // self._total:3d}% {done}/{self._total} "
                        f"{speed:8.0f} ops/s")
        self._out.flush()
        self.visible = True

    def clear(self) -> None:
        if self.visible:
            self._out.write("\r" + " " * (self.WIDTH + 50) + "\r")
            self._out.flush()
            self.visible = False


def make_sessions(settings: Settings, rng: random.Random) -> List[Session]:
    return [Session(rng.randbytes(rng.randint(ID_MIN, ID_MAX)),
                    rng.randbytes(rng.randint(settings.datamin, settings.datamax)))
            for _ in range(settings.sessions)]


def pick_timeout_ms(settings: Settings, rng: random.Random) -> int:
    """The C tool's choice: timeout - timevar, plus up to twice timevar, in ms."""
    base = int((settings.timeout - settings.timevar) * 1000)
    spread = int(2000 * settings.timevar)
    return base + (rng.randrange(spread) if spread else 0)


class Outcome(NamedTuple):
    completed: int
    elapsed: float
    latencies: List[float]
    failure: Optional[str]


def run(settings: Settings, out: IO[str], err: IO[str], tty: bool = False) -> Outcome:
    """Run the test; the outcome says how far it got and why it stopped."""
    rng = random.Random(settings.seed)
    sessions = make_sessions(settings, rng)
    model = CacheModel(sessions, settings.capacity)
    out.write(f"Info, {settings.sessions} sessions generated, will run {settings.ops} "
              "random tests\n")
    out.flush()
    mode = Mode.PERSISTENT if settings.persistent else Mode.PER_OPERATION
    try:
        cache = SessionCache(settings.connect, mode)
    except CacheError as e:
        return Outcome(0, 0.0, [], f"Error, 'DC_CTX' creation failed: {e}")
    bar = ProgressBar(out, settings.ops) if tty else None
    latencies: List[float] = []
    clock = time.monotonic
    started = clock()
    done = 0
    failure = None
    try:
        while done < settings.ops:
            index = rng.randrange(len(sessions))
            op = rng.randrange(4)
            session = sessions[index]
            sent = clock()
            try:
                if op == wire.OP_ADD:
                    timeout_ms = pick_timeout_ms(settings, rng)
                    status = cache.add_status(session.session_id, session.data, timeout_ms)
                    answered = clock()
                    model.add_done(index, sent, answered, timeout_ms, status)
                elif op == wire.OP_GET:
                    data = cache.get(session.session_id)
                    answered = clock()
                    model.get_done(index, sent, answered, data)
                elif op == wire.OP_REMOVE:
                    removed = cache.remove(session.session_id)
                    answered = clock()
                    model.remove_done(index, sent, answered, removed)
                else:
                    present = cache.has(session.session_id)
                    answered = clock()
                    model.have_done(index, sent, answered, present)
            except CacheError as e:
                failure = f"Error, transaction failure ({wire.OP_NAMES[op]}): {e}"
                break
            except Surprise as e:
                failure = f"Error, {e} [operation {done + 1}, {wire.OP_NAMES[op]}, session {index}]"
                break
            latencies.append(answered - sent)
            done += 1
            if settings.progress and done % settings.progress == 0:
                if bar is not None:
                    bar.clear()
                out.write(f"Info, total operations = {done:7d}\n")
            if bar is not None:
                bar.update(done, answered)
    finally:
        elapsed = clock() - started
        cache.close()
        if bar is not None:
            bar.clear()
    return Outcome(done, elapsed, latencies, failure)


def report(outcome: Outcome, settings: Settings, out: IO[str], err: IO[str]) -> int:
    """Print the verdict and the figures; return the exit status."""
    if outcome.failure is None:
        out.write("Info, all tests complete\n")
    else:
        err.write(outcome.failure + "\n")
        err.flush()
        out.write(f"Info, {outcome.completed} tests succeeded before the first failure\n")
    if outcome.completed:
        mode = "persistent connection" if settings.persistent else "connection per operation"
        out.write(f"Info, {outcome.completed} operations in {outcome.elapsed:.3f} s: "
                  f"{rate(outcome.completed, outcome.elapsed):.0f} ops/s ({mode})\n")
        out.write(f"Info, latency ms: {latency_line(outcome.latencies)}\n")
    out.flush()
    return 0 if outcome.failure is None else 1


def main(argv: Optional[Sequence[str]] = None, out: IO[str] = None, err: IO[str] = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-version", "--version") for a in argv):
        from distcache.version import version_line
        out.write(version_line("dc_test") + "\n")
        return 0
    try:
        settings = parse_args(argv)
    except UsageError as e:
        err.write(f"Error, {e}\n\n{USAGE}")
        return 1
    if settings is None:
        err.write(USAGE)
        return 0
    tty = hasattr(out, "isatty") and out.isatty()
    try:
        outcome = run(settings, out, err, tty)
    except KeyboardInterrupt:
        err.write("Error, interrupted\n")
        return 1
    return report(outcome, settings, out, err)


def script() -> None:
    """The ``dc_test`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    script()
