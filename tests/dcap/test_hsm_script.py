"""The HSM script back end, with real shell scripts and the real reactor."""

import os
import stat
import textwrap
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from distcache.dcap import hsm
from distcache.dcap.errors import StageFailed
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool
from polling import poll_until

# A tape in a directory, driven the dCache way: it logs its arguments,
# prints the URI on put and copies the file back on get.
GOOD_SCRIPT = """\
#!/bin/sh
echo "$@" >> "$LOG"
cmd=$1
case "$cmd" in
  put)
    cp "$3" "$TAPE/$2" || exit 43
    echo "osm://tape/?store=dcap&group=default&bfid=$2"
    ;;
  get)
    for a in "$@"; do case "$a" in -uri=*) uri=${a#-uri=};; esac; done
    bfid=${uri##*bfid=}
    [ -f "$TAPE/$bfid" ] || { echo "no such tape file $bfid" >&2; exit 31; }
    cp "$TAPE/$bfid" "$3" || exit 43
    ;;
  remove)
    uri=${2#-uri=}
    rm -f "$TAPE/${uri##*bfid=}"
    ;;
esac
"""


def write_script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def env(tmp_path, monkeypatch):
    tape_dir = tmp_path / "tape"
    tape_dir.mkdir()
    log = tmp_path / "calls.log"
    monkeypatch.setenv("TAPE", str(tape_dir))
    monkeypatch.setenv("LOG", str(log))
    return tape_dir, log


def make_pool(tmp_path, script, **kw):
    kw.setdefault("retry_delay", 0.05)
    tape = hsm.ScriptTape(script, reactor, options={"pnfs": "/pnfs/fs", "c:puts": "1"}, **kw)
    return open_pool(str(tmp_path / "root"), hsm=tape, fsync=False)


def store(pool, path, data):
    upload = pool.open_write(path, ROOT)
    upload.file.write(data)
    return upload.commit()


@pytest_twisted.inlineCallbacks
def test_put_get_remove_with_dcache_arguments(tmp_path, env):
    tape_dir, log = env
    script = write_script(tmp_path, "hsm.sh", GOOD_SCRIPT)
    pool = make_pool(tmp_path, script)
    entry = store(pool, "/f", b"to tape and back")
    flushed = yield pool.flush(entry)
    assert flushed.tape_uri == "osm://tape/?store=dcap&group=default&bfid=%s" % entry.pnfsid
    assert (tape_dir / entry.pnfsid).read_bytes() == b"to tape and back"
    dropped = pool.drop(flushed)
    staged = yield pool.stage(dropped)
    assert staged.state == "disk+tape"
    with pool.open_read(staged) as f:
        assert f.read() == b"to tape and back"
    pool.unlink("/f", ROOT)
    yield poll_until(lambda: not (tape_dir / entry.pnfsid).exists(), timeout=5)
    calls = log.read_text().splitlines()
    si = ("size=16;new=true;stored=false;sClass=dcap:default;cClass=-;hsm=osm;"
          "store=dcap;group=default;")
    assert calls[0] == "put %s %s -si=%s -command=%s -pnfs=/pnfs/fs -c:puts=1" % (
        entry.pnfsid, pool.data_path(entry), si, script)
    get = calls[1].split(" ")
    assert get[0:2] == ["get", entry.pnfsid]
    assert get[2].startswith(pool.incoming_dir)
    assert get[3] == "-si=" + si.replace("new=true;stored=false", "new=false;stored=true")
    assert get[4] == "-uri=" + flushed.tape_uri
    assert get[5:] == ["-command=" + script, "-pnfs=/pnfs/fs", "-c:puts=1"]
    assert calls[2] == "remove -uri=%s -command=%s -pnfs=/pnfs/fs -c:puts=1" % (
        flushed.tape_uri, script)
    pool.namespace.close()


def _alive(pid):
    """False once pid has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest_twisted.inlineCallbacks
def test_permanent_failure_31_fails_the_stage_without_retry(tmp_path, env):
    _tape, log = env
    script = write_script(tmp_path, "hsm.sh", """\
        #!/bin/sh
        echo "$1" >> "$LOG"
        echo "cartridge unreadable" >&2
        exit 31
        """)
    pool = make_pool(tmp_path, script)
    entry = store(pool, "/f", b"x")
    pool.namespace.set_location(entry.pnfsid, on_disk=False, tape_uri="osm://tape/?bfid=1")
    os.unlink(pool.data_path(entry))
    with pytest.raises(StageFailed) as e:
        yield pool.stage(entry)
    assert e.value.rc == 243 and e.value.permanent and e.value.exit_code == 31
    assert "cartridge unreadable" in e.value.message
    assert log.read_text().splitlines() == ["get"]
    assert os.listdir(pool.incoming_dir) == []
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_retryable_failure_is_retried_then_succeeds(tmp_path, env):
    tape_dir, log = env
    script = write_script(tmp_path, "hsm.sh", """\
        #!/bin/sh
        echo "$1" >> "$LOG"
        if [ ! -f "$TAPE/tried" ]; then touch "$TAPE/tried"; echo busy >&2; exit 1; fi
        echo "osm://tape/?store=dcap&group=default&bfid=$2"
        """)
    pool = make_pool(tmp_path, script)
    entry = store(pool, "/f", b"x")
    flushed = yield pool.flush(entry)
    assert flushed.tape_uri.endswith(entry.pnfsid)
    assert log.read_text().splitlines() == ["put", "put"]
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_retryable_failure_gives_up_after_the_retries(tmp_path, env):
    _tape, log = env
    script = write_script(tmp_path, "hsm.sh", """\
        #!/bin/sh
        echo "$1" >> "$LOG"
        exit 7
        """)
    pool = make_pool(tmp_path, script, retries=2)
    entry = store(pool, "/f", b"x")
    with pytest.raises(hsm.HsmError) as e:
        yield pool.flush(entry)
    assert e.value.exit_code == 7 and not e.value.permanent
    assert "exit 7" in e.value.message
    assert log.read_text().splitlines() == ["put"] * 3
    assert pool.namespace.lookup("/f", ROOT).tape_uri is None
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_garbage_on_stdout_is_not_taken_as_a_uri(tmp_path, env):
    for body in ('echo "stored it"; echo "osm://tape/?bfid=1"', 'echo "not a uri"', "true"):
        script = write_script(tmp_path, "hsm.sh", "#!/bin/sh\n%s\n" % body)
        pool = make_pool(tmp_path, script)
        entry = store(pool, "/f%d" % len(body), b"x")
        with pytest.raises(hsm.HsmError) as e:
            yield pool.flush(entry)
        assert e.value.permanent
        assert pool.namespace.get(entry.pnfsid).tape_uri is None
        pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_disk_errors_41_to_43(tmp_path, env):
    script = write_script(tmp_path, "hsm.sh", "#!/bin/sh\nexit 41\n")
    pool = make_pool(tmp_path, script)
    entry = store(pool, "/f", b"x")
    with pytest.raises(hsm.HsmError) as e:
        yield pool.flush(entry)
    assert e.value.rc == 204 and "no space" in e.value.message
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_hanging_script_is_killed_with_its_children(tmp_path, env):
    _tape, log = env
    script = write_script(tmp_path, "hsm.sh", """\
        #!/bin/sh
        sleep 30 &
        echo $! >> "$LOG"
        wait
        """)
    pool = make_pool(tmp_path, script, timeout=0.5, retries=0)
    entry = store(pool, "/f", b"x")
    pool.namespace.set_location(entry.pnfsid, on_disk=False, tape_uri="osm://tape/?bfid=1")
    os.unlink(pool.data_path(entry))
    started = time.monotonic()
    with pytest.raises(StageFailed) as e:
        yield pool.stage(entry)
    assert time.monotonic() - started < 10
    assert "timed out" in e.value.message
    sleeper = int(log.read_text().split()[0])
    try:
        yield poll_until(lambda: not _alive(sleeper), timeout=5)
    except TimeoutError:
        pytest.fail("the script's child survived the timeout")
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_concurrent_stages_run_the_script_once(tmp_path, env):
    tape_dir, log = env
    script = write_script(tmp_path, "hsm.sh", GOOD_SCRIPT)
    pool = make_pool(tmp_path, script)
    entry = yield pool.flush(store(pool, "/f", b"shared"))
    entry = pool.drop(entry)
    a, b = pool.stage(entry), pool.stage(entry)
    ra = yield a
    rb = yield b
    assert ra == rb and ra.state == "disk+tape"
    assert [c.split()[0] for c in log.read_text().splitlines()] == ["put", "get"]
    pool.namespace.close()
