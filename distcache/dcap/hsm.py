"""Tertiary storage ("tape") behind a pool: a directory or a dCache HSM script.

Both back ends provide ITertiaryStorage: ``flush`` copies a disk copy out
and answers the storage URI, ``stage`` brings it back to a local file,
``remove`` forgets it.  Everything returns Deferreds and never blocks the
reactor for long: the directory back end waits its delays on an injected
clock, the script back end runs the script as a child process with a timeout.

The script is called exactly as dCache calls HSM scripts:

    SCRIPT put <pnfsid> <localfile> -si=<storage-info> [-key=value ...]
    SCRIPT get <pnfsid> <localfile> -si=<storage-info> -uri=<uri> [...]
    SCRIPT remove -uri=<uri> [...]

with ``-command=<script>`` and the configured options appended.  Exit 0 is
success (``put`` prints exactly the URI on stdout); 30-39 is a permanent
failure; 41, 42, 43 are out of space, disk read and disk write errors; any
other status means "try again later" and is retried a few times.
"""

import configparser
import os
import shutil
import signal
import sys
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.internet import defer, protocol, task, threads
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from distcache.dcap.checksum import BLOCK_SIZE
from distcache.dcap.errors import (
    RC_BROKEN_ON_TAPE,
    RC_DISK_IO,
    RC_HSM_DELAY,
    StageFailed,
)

log = Logger()

CONFIG_NAME = "hsm.conf"
OUTPUT_LIMIT = 64 * 1024


class HsmError(StageFailed):
    """A tertiary-storage operation failed; permanent ones are not retried."""

    def __init__(self, rc, message, posix="EIO", permanent=False, exit_code=None):
        super().__init__(rc, message, posix)
        self.permanent = permanent
        self.exit_code = exit_code


class ITertiaryStorage(Interface):
    """What a pool needs from tape: store, recall and forget file copies."""

    hsm_type = Attribute("The HSM type, the scheme of the storage URIs (e.g. osm).")
    instance = Attribute("The HSM instance name, the authority of the URIs.")

    def flush(entry, localfile):
        """Copy localfile (entry's disk copy) out: Deferred firing with the URI."""

    def stage(entry, uri, localfile):
        """Bring uri back into localfile: Deferred firing when it is complete."""

    def remove(uri):
        """Forget the copy at uri: Deferred firing when it is gone."""


def storage_info(entry, hsm_type, store, group, new):
    """The ``-si`` value: size, new/stored, storage class and HSM keys."""
    return (
        "size=%d;new=%s;stored=%s;sClass=%s:%s;cClass=-;hsm=%s;store=%s;group=%s;"
        % (entry.size, "true" if new else "false", "false" if new else "true",
           store, group, hsm_type, store, group)
    )


def make_uri(hsm_type, instance, store, group, bfid):
    """``<type>://<instance>/?store=..&group=..&bfid=..`` as dCache writes it."""
    return "%s://%s/?%s" % (
        hsm_type, instance, urlencode([("store", store), ("group", group), ("bfid", bfid)])
    )


def parse_uri(uri, hsm_type=None):
    """(instance, {store, group, bfid}) of a storage URI; HsmError if malformed."""
    if not isinstance(uri, str) or not uri or any(c.isspace() for c in uri):
        raise HsmError(RC_HSM_DELAY, "Invalid storage URI %r" % (uri,), permanent=True)
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc or (hsm_type and parts.scheme != hsm_type):
        raise HsmError(RC_HSM_DELAY, "Invalid storage URI %r" % (uri,), permanent=True)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts.netloc, query


@implementer(ITertiaryStorage)
class DirectoryTape:
    """Tape simulated by a directory, with stage and flush delays (seconds).

    The delays run on the injected clock, so tests drive them with
    task.Clock.  Copies happen after the delay, in a thread when
    copy_in_thread is set (the door's setting), else in the caller's thread.
    """

    def __init__(self, directory, clock, stage_delay=0.0, flush_delay=0.0,
                 hsm_type="osm", instance="tape", store="dcap", group="default",
                 copy_in_thread=False):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.clock = clock
        self.stage_delay = stage_delay
        self.flush_delay = flush_delay
        self.hsm_type = hsm_type
        self.instance = instance
        self.store = store
        self.group = group
        self.copy_in_thread = copy_in_thread

    def _copy(self, src, dst):
        if self.copy_in_thread:
            return threads.deferToThreadPool(
                self.clock, self.clock.getThreadPool(), _copy_file, src, dst)
        return defer.maybeDeferred(_copy_file, src, dst)

    def _bfid_path(self, uri):
        _instance, query = parse_uri(uri, self.hsm_type)
        bfid = query.get("bfid", "")
        if not bfid or "/" in bfid or bfid in (".", ".."):
            raise HsmError(RC_HSM_DELAY, "Invalid storage URI %r" % (uri,), permanent=True)
        return os.path.join(self.directory, bfid)

    def flush(self, entry, localfile):
        bfid = entry.pnfsid
        uri = make_uri(self.hsm_type, self.instance, self.store, self.group, bfid)
        d = task.deferLater(self.clock, self.flush_delay, lambda: None)
        d.addCallback(lambda _: self._copy(localfile, os.path.join(self.directory, bfid)))
        d.addCallback(lambda _: uri)
        return d

    def stage(self, entry, uri, localfile):
        try:
            source = self._bfid_path(uri)
        except HsmError as e:
            return defer.fail(e)

        def recall(_):
            if not os.path.exists(source):
                raise HsmError(RC_BROKEN_ON_TAPE, "File %s is missing on tape (%s)"
                               % (entry.pnfsid, uri), permanent=True)
            return self._copy(source, localfile)

        d = task.deferLater(self.clock, self.stage_delay, lambda: None)
        d.addCallback(recall)
        return d

    def remove(self, uri):
        try:
            os.unlink(self._bfid_path(uri))
        except FileNotFoundError:
            pass
        except HsmError as e:
            return defer.fail(e)
        return defer.succeed(None)


def _copy_file(src, dst):
    """Copy src to dst through a temporary name, so dst is never half there."""
    temp = dst + ".part"
    with open(src, "rb") as fin, open(temp, "wb") as fout:
        shutil.copyfileobj(fin, fout, BLOCK_SIZE)
        fout.flush()
        os.fsync(fout.fileno())
    os.rename(temp, dst)


# Runs the script as the leader of a new process group, so a timeout can
# kill it together with whatever it started.
_SESSION_LEADER = "import os,sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


class _ScriptProtocol(protocol.ProcessProtocol):
    """Collects a script's output (bounded) and its exit status."""

    def __init__(self, done):
        self.done = done
        self.out = bytearray()
        self.err = bytearray()

    def outReceived(self, data):
        if len(self.out) < OUTPUT_LIMIT:
            self.out += data[: OUTPUT_LIMIT - len(self.out)]

    def errReceived(self, data):
        if len(self.err) < OUTPUT_LIMIT:
            self.err += data[: OUTPUT_LIMIT - len(self.err)]

    def processEnded(self, reason):
        status = reason.value.exitCode
        if status is None:
            status = -(reason.value.signal or 1)
        self.done.callback((status, bytes(self.out), bytes(self.err)))


@implementer(ITertiaryStorage)
class ScriptTape:
    """An external HSM script, called the way dCache pools call it.

    options are the pool's ``hsm set`` options (passed as ``-key=value``);
    a run longer than timeout seconds is killed and counts as retryable;
    retryable failures are tried retries more times, retry_delay apart.
    """

    def __init__(self, script, reactor, options=None, hsm_type="osm", instance="tape",
                 store="dcap", group="default", timeout=600.0, retries=2,
                 retry_delay=5.0):
        self.script = os.path.abspath(script)
        self.reactor = reactor
        self.options = dict(options or {})
        self.hsm_type = hsm_type
        self.instance = instance
        self.store = store
        self.group = group
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay

    def _options(self):
        opts = ["-command=%s" % self.script]
        opts += ["-%s=%s" % (k, v) for k, v in self.options.items()]
        return opts

    def run(self, args):
        """Run the script once: Deferred firing with (status, stdout, stderr)."""
        done = defer.Deferred()
        proto = _ScriptProtocol(done)
        argv = [sys.executable, "-c", _SESSION_LEADER, self.script] + list(args)
        process = self.reactor.spawnProcess(
            proto, sys.executable, argv, env=os.environ.copy(), childFDs={0: "w", 1: "r", 2: "r"}
        )
        proto.transport.closeStdin()

        def expire():
            log.warn("HSM script {script} timed out after {timeout}s; killing it",
                     script=self.script, timeout=self.timeout)
            proto.timed_out = True
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (OSError, TypeError):
                try:
                    process.signalProcess("KILL")
                except Exception:
                    pass
            process.loseConnection()

        proto.timed_out = False
        timer = self.reactor.callLater(self.timeout, expire)

        def ended(result):
            if timer.active():
                timer.cancel()
            if proto.timed_out:
                return (None, result[1], result[2])
            return result

        return done.addCallback(ended)

    def _call(self, what, args, check_output=None):
        """Run with retries; fires with stdout, or fails with an HsmError."""
        attempt = [0]

        def once():
            attempt[0] += 1
            return self.run(args).addCallback(judge)

        def judge(result):
            status, out, err = result
            message = err.decode("ascii", "replace").strip().splitlines()
            reason = message[-1] if message else ""
            if status is None:
                error = HsmError(RC_HSM_DELAY, "HSM script %s %s timed out after %gs"
                                 % (os.path.basename(self.script), what, self.timeout))
            elif status == 0:
                if check_output is None:
                    return out
                return check_output(out)
            else:
                error = classify(status, what, os.path.basename(self.script), reason)
            if error.permanent or attempt[0] > self.retries:
                raise error
            log.warn("{what} failed ({error}); retrying in {delay}s",
                     what=what, error=error, delay=self.retry_delay)
            return task.deferLater(self.reactor, self.retry_delay, once)

        return once()

    def flush(self, entry, localfile):
        si = storage_info(entry, self.hsm_type, self.store, self.group, new=True)
        args = ["put", entry.pnfsid, localfile, "-si=" + si] + self._options()

        def uri_of(out):
            text = out.decode("ascii", "replace")
            lines = [line for line in text.splitlines() if line.strip()]
            if len(lines) != 1:
                raise HsmError(RC_HSM_DELAY, "HSM script put printed %d lines instead "
                               "of one storage URI" % len(lines), permanent=True)
            uri = lines[0].strip()
            parse_uri(uri)
            return uri

        return self._call("put " + entry.pnfsid, args, uri_of)

    def stage(self, entry, uri, localfile):
        si = storage_info(entry, self.hsm_type, self.store, self.group, new=False)
        args = ["get", entry.pnfsid, localfile, "-si=" + si, "-uri=" + uri] + self._options()
        return self._call("get " + entry.pnfsid, args).addCallback(lambda _: None)

    def remove(self, uri):
        args = ["remove", "-uri=" + uri] + self._options()
        return self._call("remove", args).addCallback(lambda _: None)


def classify(status, what, script, reason):
    """The HsmError for a script's non-zero exit status."""
    detail = ": %s" % reason if reason else ""
    if 30 <= status <= 39:
        return HsmError(RC_BROKEN_ON_TAPE, "HSM script %s %s failed permanently (exit %d)%s"
                        % (script, what, status, detail), permanent=True, exit_code=status)
    if status in (41, 42, 43):
        kind = {41: "no space left on pool", 42: "disk read error",
                43: "disk write error"}[status]
        return HsmError(RC_DISK_IO, "HSM script %s %s: %s (exit %d)%s"
                        % (script, what, kind, status, detail), permanent=True,
                        exit_code=status)
    return HsmError(RC_HSM_DELAY, "HSM script %s %s failed (exit %d)%s"
                    % (script, what, status, detail), exit_code=status)


# -- configuration kept in the state directory -----------------------------

def config_path(root):
    return os.path.join(root, CONFIG_NAME)


def save_config(root, kind, path, **settings):
    """Record the tape back end of root, so doors and dcap-admin agree on it.

    kind is "directory" or "script"; settings are stage_delay, flush_delay,
    timeout, hsm_type, instance, store, group and script options
    (``options={...}``).
    """
    if kind not in ("directory", "script"):
        raise ValueError("tape kind must be 'directory' or 'script'")
    cfg = configparser.ConfigParser(interpolation=None)
    section = {"kind": kind, "path": os.path.abspath(path)}
    for key, value in settings.items():
        if key != "options" and value is not None:
            section[key] = str(value)
    cfg["tape"] = section
    cfg["options"] = {str(k): str(v) for k, v in (settings.get("options") or {}).items()}
    temp = config_path(root) + ".tmp"
    with open(temp, "w") as f:
        cfg.write(f)
    os.rename(temp, config_path(root))


def load_config(root, reactor):
    """The tape back end configured for root, or None when there is none."""
    path = config_path(root)
    if not os.path.exists(path):
        return None
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    try:
        tape = cfg["tape"]
        kind = tape["kind"]
        common = {k: tape[k] for k in ("hsm_type", "instance", "store", "group") if k in tape}
        if kind == "directory":
            return DirectoryTape(
                tape["path"], reactor,
                stage_delay=float(tape.get("stage_delay", "0")),
                flush_delay=float(tape.get("flush_delay", "0")),
                copy_in_thread=hasattr(reactor, "getThreadPool"), **common)
        if kind == "script":
            options = dict(cfg["options"]) if cfg.has_section("options") else {}
            return ScriptTape(
                tape["path"], reactor, options=options,
                timeout=float(tape.get("timeout", "600")),
                retries=int(tape.get("retries", "2")),
                retry_delay=float(tape.get("retry_delay", "5")), **common)
    except (KeyError, ValueError) as e:
        raise ValueError("%s: bad tape configuration (%s)" % (path, e)) from None
    raise ValueError("%s: unknown tape kind %r" % (path, kind))
