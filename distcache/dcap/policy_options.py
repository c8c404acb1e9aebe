"""
The door's policy options for twistd, and their resolution at start-up.

``PolicyOptions`` is a usage.Options mixin: the door's Options class inherits
it, and ``policy_from_options(config)`` reads the files it names and resolves
everything into one DcapPolicy, turning any ConfigError into a UsageError so
that twistd stops with the file, line and reason instead of a traceback.
"""

from twisted.logger import Logger
from twisted.python import usage

from distcache.dcap.batchfile import parse_option_line, read_batch
from distcache.dcap.configsource import ConfigError, Setting
from distcache.dcap.policy import BUFFER_OPTIONS, resolve_policy
from distcache.dcap.poollist import read_poollist

log = Logger()

# twistd option name -> create-line name of the same setting.
BUFFER_FLAGS = {
    "default-send-buffer-size": "defaultSendBufferSize",
    "default-recv-buffer-size": "defaultRecvBufferSize",
    "max-send-buffer-size": "maxSendBufferSize",
    "max-recv-buffer-size": "maxRecvBufferSize",
    "default-io-buffer-size": "defaultIoBufferSize",
    "max-io-buffer-size": "maxIoBufferSize",
}
assert set(BUFFER_FLAGS.values()) == set(BUFFER_OPTIONS)

PLAIN_FLAGS = {
    "open-timeout": "openTimeout",
    "keep-alive": "keepAlive",
    "check": "check",
    "portrange": "portrange",
    "pool-size": "poolSize",
    "high-water": "highWater",
    "low-water": "lowWater",
    "flush-after": "flushAfter",
    "flush-batch": "flushBatch",
    "sweep-interval": "sweepInterval",
    "data-port": "dataport",
}


class PolicyOptions(usage.Options):
    """Buffer sizes, openTimeout, keep-alive, strict check, port range, pool space."""

    optParameters = [
        ["batch", None, None,
         "dCache batch/context file: 'set context NAME VALUE' lines and "
         "door/pool create lines with -key=value options."],
        ["poollist", None, None,
         "dCache poollist file: 'POOL DIR key=value ... tag.NAME=VALUE'."],
        ["door-options", None, None,
         "Door create-line options, e.g. '-openTimeout=300 -keepAlive=60 "
         "-check=strict'."],
        ["pool-options", None, None,
         "Pool create-line options, e.g. '-defaultSendBufferSize=262144'."],
        ["open-timeout", None, None,
         "Seconds an open may wait (e.g. for a stage) before it fails with "
         "rc 112; the client's -timeout (dccp -o) overrides it; 0 for none."],
        ["keep-alive", None, None,
         "Seconds between the door's keep-alive passes, which enforce open "
         "timeouts; without it no open timeout is enforced."],
        ["check", None, None,
         "'strict': check answers ok only for a disk copy on a pool that is "
         "up; 'fuzzy' (default): from the namespace."],
        ["portrange", None, None,
         "Ports the pool's data port may take (the first free one): LOW:HIGH or "
         "org.dcache.net.tcp.portrange=LOW:HIGH."],
        ["pool-size", None, None,
         "Disk space the pool may use (bytes, or 500M, 10G); above the high "
         "mark the sweeper drops files already on tape, least recently used "
         "first (poolSize)."],
        ["high-water", None, None,
         "High water mark: fraction (0.95) or percentage (95%) of --pool-size "
         "above which the sweeper runs (highWater; default 0.95)."],
        ["low-water", None, None,
         "Low water mark the sweeper drops down to (lowWater; default 0.85)."],
        ["flush-after", None, None,
         "Flush a new file to tape once it is this many seconds old (flushAfter)."],
        ["flush-batch", None, None,
         "Flush the waiting new files as soon as this many wait (flushBatch)."],
        ["sweep-interval", None, None,
         "Seconds between the pool's space and flush checks (sweepInterval; "
         "default 10)."],
        ["data-port", None, None,
         "The one port every server-passive mover shares (inside --portrange "
         "if both are given); default: the first free port of --portrange, "
         "else one the system chooses."],
    ] + [
        [flag, None, None, f"Bytes ({name}); overrides batch and poollist."]
        for flag, name in BUFFER_FLAGS.items()
    ]


def _explicit(config):
    explicit = {}
    for flag, name in list(PLAIN_FLAGS.items()) + list(BUFFER_FLAGS.items()):
        value = config.get(flag)
        if value is not None:
            explicit[name] = Setting(str(value), "--" + flag)
    return explicit


def load_policy(config):
    """Read the configured files and resolve the policy (ConfigError on error)."""
    batch = read_batch(config["batch"]) if config.get("batch") else None
    if batch is not None:
        for origin, line in batch.ignored:
            log.info("{origin}: batch command not used by this door: {line}",
                     origin=origin, line=line)
    poollist = read_poollist(config["poollist"]) if config.get("poollist") else ()
    door = (parse_option_line(config["door-options"], "--door-options")
            if config.get("door-options") else None)
    pool = (parse_option_line(config["pool-options"], "--pool-options")
            if config.get("pool-options") else None)
    return resolve_policy(batch, poollist, door, pool, _explicit(config))


def policy_from_options(config):
    """load_policy for twistd: a bad setting becomes a UsageError."""
    try:
        return load_policy(config)
    except ConfigError as e:
        raise usage.UsageError(str(e)) from None
