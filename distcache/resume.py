"""dc_resume: does a farm of TLS servers share its sessions?

It makes N handshakes spread over the servers given: every other one is a full
handshake on one server, and the next one offers that session to another server
(cycling through every ordered pair), then prints the handshake rate, the share of
sessions each pair resumed, and a verdict.  After each handshake it sends an HTTP
HEAD request and reads the answer, which is also when TLS 1.3 servers send the
tickets a resumption needs.

A command-line check with plain blocking sockets and the standard ``ssl`` module: it
runs no reactor.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import sys
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from twisted.python import usage

#: A pair resuming at least this share of its sessions counts as sharing them.
SHARED = 0.9
READ_TIMEOUT = 2.0


class Target(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_targets(text: str) -> List[Target]:
    targets = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise usage.UsageError(f"{item!r} is not HOST:PORT")
        targets.append(Target(host, int(port)))
    return targets


def pairs(targets: Sequence[Target]) -> List[Tuple[Target, Target]]:
    """Every ordered pair of distinct servers (a lone server is paired with itself)."""
    if len(targets) == 1:
        return [(targets[0], targets[0])]
    return [(a, b) for a, b in itertools.permutations(targets, 2)]


class PairResult:
    __slots__ = ("tried", "reused", "failed")

    def __init__(self):
        self.tried = 0
        self.reused = 0
        self.failed = 0

    @property
    def rate(self) -> float:
        return self.reused / self.tried if self.tried else 0.0


def verdict(results: Dict[Tuple[Target, Target], PairResult]) -> Tuple[bool, str]:
    tried = [r for r in results.values() if r.tried]
    if not tried:
        return False, "no session could be offered: no verdict"
    shared = [r.rate >= SHARED for r in tried]
    if all(shared):
        return True, "this farm shares sessions"
    if any(r.reused for r in tried):
        return False, "this farm shares sessions only partly"
    return False, "this farm does not share sessions"


class Options(usage.Options):
    synopsis = ("Usage: dc_resume HOST:PORT[,HOST:PORT...] [-n N] [--tls1.2|--tls1.3] "
                "[--servername NAME] [--cafile F]")
    longdesc = ("Makes N TLS handshakes across the servers, resuming each new session on "
                "another server, and reports whether the farm shares sessions.")
    optFlags = [
        ["tls1.2", None, "Use TLS 1.2 only."],
        ["tls1.3", None, "Use TLS 1.3 only."],
    ]
    optParameters = [
        ["n", "n", "100", "How many handshakes to make."],
        ["servername", None, None, "SNI and HTTP Host name (default: each server's host)."],
        ["cafile", None, None, "Verify certificates against these CAs (default: no check)."],
        ["timeout", None, "5", "Seconds allowed for each connection and handshake."],
    ]

    def parseArgs(self, servers):
        self["targets"] = parse_targets(servers)

    def postOptions(self):
        if self["tls1.2"] and self["tls1.3"]:
            raise usage.UsageError("--tls1.2 and --tls1.3 exclude each other")
        try:
            self["n"] = int(self["n"])
            self["timeout"] = float(self["timeout"])
        except ValueError:
            raise usage.UsageError("-n takes a whole number and --timeout seconds")
        if self["n"] < 2:
            raise usage.UsageError("-n must be at least 2 (a handshake and a resumption)")


_TAKES_VALUE = {"-n", "--n", "--servername", "--cafile", "--timeout"}


def options_first(argv: Sequence[str]) -> List[str]:
    """Move the server list behind the options, so that it may come first, as in the synopsis."""
    options: List[str] = []
    rest: List[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            rest += args
            break
        if arg.startswith("-"):
            options.append(arg)
            if arg in _TAKES_VALUE and args:
                options.append(args.pop(0))
        else:
            rest.append(arg)
    return options + rest


def make_context(tls: Optional[str], cafile: Optional[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        context.load_verify_locations(cafile)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls == "1.2":
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
    elif tls == "1.3":
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def handshake(context: ssl.SSLContext, target: Target, servername: Optional[str],
              timeout: float, session=None):
    """One handshake and a HEAD request; returns (session, reused)."""
    name = servername or target.host
    with socket.create_connection(tuple(target), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=name, session=session) as tls:
            tls.sendall(b"HEAD / HTTP/1.0\r\nHost: %s\r\n\r\n" % name.encode("idna"))
            tls.settimeout(READ_TIMEOUT)
            try:
                while tls.recv(65536):
                    pass
            except (socket.timeout, ssl.SSLError, OSError):
                pass
            return tls.session, tls.session_reused


def run(targets: Sequence[Target], n: int, context: ssl.SSLContext,
        servername: Optional[str], timeout: float, out=None):
    out = out or sys.stdout
    results = {pair: PairResult() for pair in pairs(targets)}
    cycle = itertools.cycle(results)
    made = failed = 0
    started = time.monotonic()
    while made < n:
        origin, other = next(cycle)
        result = results[(origin, other)]
        made += 1
        try:
            session, _ = handshake(context, origin, servername, timeout)
        except (OSError, ssl.SSLError) as e:
            failed += 1
            print(f"dc_resume: handshake with {origin} failed: {e}", file=out)
            continue
        if made >= n:
            break
        made += 1
        result.tried += 1
        try:
            _, reused = handshake(context, other, servername, timeout, session)
        except (OSError, ssl.SSLError) as e:
            result.failed += 1
            failed += 1
            print(f"dc_resume: resumption on {other} failed: {e}", file=out)
            continue
        result.reused += reused
    elapsed = time.monotonic() - started
    return results, made, failed, elapsed


def report(results, made: int, failed: int, elapsed: float, out=None) -> bool:
    out = out or sys.stdout
    rate = made / elapsed if elapsed > 0 else 0.0
    print(f"{made} handshakes in {elapsed:.2f} s: {rate:.1f} handshakes/s"
          + (f" ({failed} failed)" if failed else ""), file=out)
    width = max(len(str(a)) for a, _ in results)
    print(f"{'new session on':<{width}}  {'resumed on':<{width}}  reused", file=out)
    for (a, b), r in results.items():
        print(f"{str(a):<{width}}  {str(b):<{width}}  {r.reused}/{r.tried} "
              f"({100 * r.rate:.0f}%)", file=out)
    shared, text = verdict(results)
    print(f"verdict: {text}", file=out)
    return shared


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = Options()
    try:
        options.parseOptions(options_first(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        print(f"dc_resume: {e}\n{options}", file=sys.stderr)
        return 2
    tls = "1.2" if options["tls1.2"] else "1.3" if options["tls1.3"] else None
    try:
        context = make_context(tls, options["cafile"])
    except (OSError, ssl.SSLError) as e:
        print(f"dc_resume: --cafile: {e}", file=sys.stderr)
        return 2
    results, made, failed, elapsed = run(options["targets"], options["n"], context,
                                         options["servername"], options["timeout"])
    return 0 if report(results, made, failed, elapsed) else 1


def script() -> None:
    sys.exit(main())
