"""Tape pools that look after themselves: sweeper, flush policy, pins, ENOSPC, on a task.Clock."""

import os

import pytest
from twisted.internet import task

from distcache.dcap import hsm, space
from distcache.dcap.configsource import ConfigError, Setting
from distcache.dcap.errors import NoSpace
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool
from distcache.dcap.space import SpaceSettings, parse_bytes, parse_fraction, resolve_space
from distcache.dcap.sweeper import Copy, Survey, sweep_target, victims
from held_workers import HeldWorkers

KB = 100  # every test file has this many bytes


@pytest.fixture
def clock():
    return task.Clock()


def make_pool(tmp_path, clock, stage_delay=0, **settings):
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), clock, stage_delay=stage_delay)
    settings.setdefault("sweep_interval", 10)
    pool = open_pool(str(tmp_path / "root"), hsm=tape, fsync=False, clock=clock,
                     space=SpaceSettings(**settings))
    return pool


@pytest.fixture
def pools(tmp_path, clock):
    made = []

    def make(**settings):
        pool = make_pool(tmp_path, clock, **settings)
        made.append(pool)
        return pool
    yield make
    for pool in made:
        pool.stop_management()
        pool.namespace.close()


def result(d):
    """The value of d, a Deferred that has fired or a plain value (inline workers)."""
    if not hasattr(d, "addBoth"):
        return d
    box = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def store(pool, path, size=KB, **kw):
    upload = pool.open_write(path, ROOT, **kw)
    upload.file.write(b"x" * size)
    return upload.commit()


def flushed(pool, path, size=KB):
    entry = store(pool, path, size)
    d = pool.flush(entry)
    pool.clock.advance(0)  # the directory tape's (zero) flush delay
    return result(d)


def state(pool, path):
    return pool.namespace.lookup(path, ROOT).state


def read(pool, path):
    entry = pool.namespace.open_read(path, ROOT)
    with pool.open_read(entry) as f:
        return f.read()


# -- settings ---------------------------------------------------------------

def test_water_marks_are_fractions_or_percentages():
    assert parse_fraction("0.9") == 0.9
    assert parse_fraction("90%") == pytest.approx(0.9)
    assert parse_fraction("85") == pytest.approx(0.85)
    for bad in ("0", "-0.1", "101%", "high", ""):
        with pytest.raises(ValueError):
            parse_fraction(bad)


def test_sizes_take_binary_units():
    assert parse_bytes("4096") == 4096
    assert parse_bytes("10k") == 10 * 1024
    assert parse_bytes("2G") == 2 << 30
    assert parse_bytes("1GiB") == 1 << 30
    for bad in ("0", "-5", "ten", "5X", ""):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_defaults_and_precedence():
    default = SpaceSettings()
    assert (default.pool_size, default.high, default.low) == (None, 0.95, 0.85)
    assert not default.manages_space and not default.flushes
    explicit = {"poolSize": Setting("1000", "--pool-size")}
    pool = {"poolSize": Setting("50", "pool.batch:2"), "lowWater": Setting("50%", "pool.batch:3")}
    s = resolve_space(explicit, pool)
    assert (s.pool_size, s.high, s.low) == (1000, 0.95, 0.5)
    assert (s.high_bytes, s.low_bytes) == (950, 500)
    with pytest.raises(ConfigError) as e:
        resolve_space({"highWater": Setting("0.5", "--high-water")},
                      {"lowWater": Setting("0.6", "p:1")})
    assert "p:1" in str(e.value) and "lowWater" in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve_space({"poolSize": Setting("lots", "--pool-size")})
    assert str(e.value).startswith("--pool-size: poolSize must be a number of bytes")


def test_door_options_and_pool_create_line(tmp_path):
    from twisted.python import usage
    from distcache.dcap_tap import Options
    o = Options()
    o.parseOptions(["--root", str(tmp_path), "--pool-size", "10M", "--high-water", "90%",
                    "--pool-options", "-lowWater=0.5 -flushAfter=600 -flushBatch=20"])
    s = o["policy"].space
    assert (s.pool_size, s.high, s.low, s.flush_after, s.flush_batch) == (
        10 << 20, pytest.approx(0.9), 0.5, 600.0, 20)
    with pytest.raises(usage.UsageError, match="lowWater"):
        Options().parseOptions(["--root", str(tmp_path), "--low-water", "0.99"])


def test_poollist_entry_of_the_door_pool_and_the_batch_pool_line(tmp_path):
    from distcache.dcap.policy_options import load_policy
    batch = tmp_path / "door.batch"
    batch.write_text('create diskCacheV111.pools.MultiProtocolPool2 pool1 '
                     '"/srv/pool1 -poolSize=2G -highWater=90%"\n')
    poollist = tmp_path / "pools.poollist"
    poollist.write_text("pool1 /srv/pool1 lowWater=0.5 flushBatch=10\n"
                        "pool2 /srv/pool2 poolSize=1M\n")
    config = {"batch": str(batch), "poollist": str(poollist), "low-water": None}
    policy = load_policy(config)
    own = policy.space_for("pool1")
    assert (own.pool_size, own.high, own.low, own.flush_batch) == (
        2 << 30, pytest.approx(0.9), 0.5, 10)
    assert policy.space_for("pool2").pool_size == 1 << 20
    assert policy.space_for("other") == policy.space
    assert policy.space.low == 0.85  # the poollist entry is pool1's alone
    config["low-water"] = "0.6"  # the twistd option wins over everything
    assert load_policy(config).space_for("pool1").low == 0.6


def test_settings_recorded_for_the_admin_tool(tmp_path):
    s = SpaceSettings(pool_size=5000, high=0.9, low=0.6, flush_after=30.0)
    space.save_settings(str(tmp_path), s)
    assert space.load_settings(str(tmp_path)) == s
    assert space.load_settings(str(tmp_path / "nothing")) == SpaceSettings()


# -- the sweeper's choice (pure) ---------------------------------------------

def copy(pnfsid, accessed, on_tape=True, busy=False, pinned_until=None):
    return Copy(pnfsid, KB, accessed, accessed, on_tape, busy, pinned_until)


def test_victims_least_recently_used_first_and_only_droppable_ones():
    survey = Survey(now=100, pool_size=1000, copies=(
        copy("a", 5), copy("b", 1), copy("c", 3, busy=True), copy("d", 2, pinned_until=200),
        copy("e", 4, on_tape=False), copy("f", 0, pinned_until=50), copy("g", 6)))
    assert survey.used == 700 and survey.droppable == 400
    assert [c.pnfsid for c in victims(survey, 550)] == ["f", "b"]
    assert [c.pnfsid for c in victims(survey, 0)] == ["f", "b", "a", "g"]
    assert victims(survey, 700) == []
    assert survey.room_after_drops == 700


def test_sweep_target():
    survey = Survey(now=0, pool_size=1000, copies=tuple(copy(str(i), i) for i in range(9)))
    assert sweep_target(survey, high=950, low=500) is None
    assert sweep_target(survey, high=850, low=500) == 500
    assert sweep_target(survey, high=950, low=500, need=300) == 700
    assert sweep_target(survey, high=950, low=500, need=100) is None


# -- the pool on the injected clock ------------------------------------------

def test_above_the_high_mark_drops_lru_tape_copies_to_the_low_mark(pools, clock):
    pool = pools(pool_size=1000, high=0.9, low=0.5)
    for i in range(4):
        clock.advance(1)
        flushed(pool, "/f%d" % i)
    pool.start_management()
    clock.advance(10)
    assert [state(pool, "/f%d" % i) for i in range(4)] == ["disk+tape"] * 4  # 400 < 900
    for i in range(4, 9):
        clock.advance(1)
        flushed(pool, "/f%d" % i)
    clock.advance(1)
    read(pool, "/f0")  # f0 becomes the most recently used
    store(pool, "/new")  # 1000 bytes used, above 900
    clock.advance(10)
    states = {i: state(pool, "/f%d" % i) for i in range(9)}
    assert [i for i, s in states.items() if s == "tape"] == [1, 2, 3, 4, 5]
    assert state(pool, "/new") == "disk"
    assert sum(c.size for c in result(pool.survey()).copies) == 500
    assert read(pool, "/f0") == b"x" * KB


def test_busy_and_pinned_copies_are_never_dropped(pools, clock):
    pool = pools(pool_size=400, high=0.2, low=0.1)
    entries = [flushed(pool, "/f%d" % i) for i in range(4)]
    reader = pool.open_read(entries[0])
    result(pool.pin(entries[1], 60))
    clock.advance(1)
    assert [c.pnfsid for c in result(pool.sweeper.sweep())] == [
        e.pnfsid for e in entries[2:]]
    assert [state(pool, "/f%d" % i) for i in range(4)] == ["disk+tape"] * 2 + ["tape"] * 2
    reader.close()
    assert [c.pnfsid for c in result(pool.sweeper.sweep())] == [entries[0].pnfsid]
    assert state(pool, "/f1") == "disk+tape"  # still pinned
    clock.advance(60)
    result(pool.sweeper.sweep())
    assert state(pool, "/f1") == "tape"
    assert os.listdir(pool.pins_dir) == []  # the expired pin is gone


def test_pin_lifetime_keeps_the_later_pin(pools, clock):
    pool = pools()
    entry = store(pool, "/f")
    assert result(pool.pin(entry, 100)) == 100
    clock.advance(10)
    assert result(pool.pin(entry, 50)) == 100
    assert result(pool.pin(entry, 200)) == 210
    assert result(pool.pins()) == {entry.pnfsid: 210}


def test_write_that_cannot_fit_after_dropping_fails_at_open_with_enospc(pools, clock):
    pool = pools(pool_size=500, high=0.95, low=0.85)
    for i in range(3):
        store(pool, "/new%d" % i)  # not on tape: never droppable
    flushed(pool, "/old")
    with pytest.raises(NoSpace) as e:
        pool.open_write("/big", ROOT, alloc_size=300)
    assert e.value.posix == "ENOSPC"
    assert "200 free after dropping" in e.value.message
    assert state(pool, "/old") == "disk+tape"  # a refused write drops nothing
    upload = result(pool.open_write("/fits", ROOT, alloc_size=200))  # fits once /old is dropped
    assert state(pool, "/old") == "tape"
    upload.abort()
    store(pool, "/a", size=200)
    with pytest.raises(NoSpace):
        pool.open_write("/full", ROOT)  # not one byte is left


def test_room_after_drops_is_the_one_answer(pools, clock):
    pool = pools(pool_size=1000)
    store(pool, "/disk", size=300)
    flushed(pool, "/tape", size=200)
    assert result(pool.room_after_drops()) == 1000 - 300
    assert result(pools().room_after_drops()) is None  # no size: no limit


def test_flush_after_seconds(pools, clock):
    pool = pools(flush_after=60, sweep_interval=10)
    pool.start_management()
    store(pool, "/f")
    clock.advance(50)
    assert state(pool, "/f") == "disk"
    clock.advance(10)
    assert state(pool, "/f") == "disk+tape"


def test_flush_batch(pools, clock):
    pool = pools(flush_batch=3, sweep_interval=5)
    pool.start_management()
    store(pool, "/a")
    store(pool, "/b")
    clock.advance(100)
    assert {state(pool, p) for p in ("/a", "/b")} == {"disk"}
    store(pool, "/c")
    clock.advance(5)
    assert {state(pool, p) for p in ("/a", "/b", "/c")} == {"disk+tape"}


def test_above_the_high_mark_flushes_at_once_and_then_sweeps(pools, clock):
    pool = pools(pool_size=1000, high=0.5, low=0.2, sweep_interval=5)
    pool.start_management()
    for i in range(6):
        store(pool, "/f%d" % i)  # 600 bytes, none on tape
    clock.advance(5)  # the flush policy flushes everything; the sweeper found nothing yet
    assert all(state(pool, "/f%d" % i) != "disk" for i in range(6))
    clock.advance(5)
    assert sum(c.size for c in result(pool.survey()).copies) <= 200


def test_no_tape_means_no_flush_policy(tmp_path, clock):
    pool = open_pool(str(tmp_path / "root"), clock=clock, space=SpaceSettings(flush_after=1))
    try:
        assert not pool.flusher.active
        pool.start_management()
        store(pool, "/f")
        clock.advance(100)
        assert state(pool, "/f") == "disk"
    finally:
        pool.stop_management()
        pool.namespace.close()


# -- the door ---------------------------------------------------------------

def door_client(pool):
    from twisted.internet.testing import MemoryReactorClock, StringTransport
    from distcache.dcap.door import DoorFactory
    from distcache.dcap.doorconfig import DoorConfig
    from distcache.dcap.namespace import Access
    factory = DoorFactory(pool, DoorConfig(access=Access.FULL), MemoryReactorClock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)

    def ask(line):
        transport.clear()
        proto.dataReceived(line.encode("ascii") + b"\n")
        return transport.value().decode("ascii").splitlines()
    assert ask('0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0') == [
        "0 0 server welcome 2 47"]
    return ask


def test_stage_pins_the_staged_copy_for_its_stagetime(pools, clock):
    pool = pools(pool_size=1000, high=0.05, low=0.01)
    entry = flushed(pool, "/f")
    result(pool.drop(entry))
    ask = door_client(pool)
    assert ask('1 0 client stage "dcap://h//f" -stagetime=300 -location=h -uid=0') == [
        "1 0 client ok"]
    clock.advance(0)  # the directory tape's stage delay
    assert state(pool, "/f") == "disk+tape"
    assert result(pool.pins()) == {entry.pnfsid: 300}
    result(pool.sweeper.sweep())
    assert state(pool, "/f") == "disk+tape"  # pinned: above the high mark, but kept
    clock.advance(300)
    result(pool.sweeper.sweep())
    assert state(pool, "/f") == "tape"
    # dccp's default stage time (0) stages without a pin
    assert ask('2 0 client stage "dcap://h//f" -stagetime=0 -location=h -uid=0') == [
        "2 0 client ok"]
    clock.advance(0)
    assert state(pool, "/f") == "disk+tape" and result(pool.pins()) == {}


def test_door_open_for_writing_fails_with_enospc(pools, clock):
    pool = pools(pool_size=100)
    store(pool, "/full", size=100)
    ask = door_client(pool)
    assert ask('1 0 client open "dcap://h//g" w -mode=0644 h 1 -uid=0') == [
        '1 0 client failed 204 "No space left on pool pool1: 1 bytes wanted, 0 free after '
        'dropping every copy that is on tape" ENOSPC']


def test_data_of_no_file_counts_as_used_but_is_neither_flushed_nor_dropped(pools, clock):
    pool = pools(pool_size=1000, high=0.1, low=0.05, flush_batch=1, sweep_interval=5)
    with open(os.path.join(pool.data_dir, "0000000000000000000000000000000000ff"), "wb") as f:
        f.write(b"y" * 300)
    pool.start_management()
    clock.advance(10)
    survey = result(pool.survey())
    assert (survey.used, survey.droppable, survey.room_after_drops) == (300, 0, 700)
    assert [c.is_file for c in survey.copies] == [False]
    assert os.listdir(pool.hsm.directory) == []


def test_a_failing_tape_is_tried_again_later_and_later(pools, clock):
    pool = pools(flush_batch=1, sweep_interval=5)
    tries = []
    real_flush = pool.hsm.flush

    def broken(entry, localfile):
        tries.append(clock.seconds())
        raise OSError("tape drive offline")
    pool.hsm.flush = broken
    pool.start_management()
    store(pool, "/f")
    clock.pump([5] * 30)  # 150 seconds
    assert tries == [5, 15, 35, 75]  # 10, 20, 40 and 80 seconds apart
    pool.hsm.flush = real_flush
    clock.pump([5] * 40)
    assert state(pool, "/f") == "disk+tape"


def test_a_copy_being_copied_for_an_rw_open_is_busy(tmp_path, clock):
    workers = HeldWorkers()
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), clock)
    pool = open_pool(str(tmp_path / "root"), hsm=tape, fsync=False, clock=clock,
                     workers=workers)
    try:
        upload = pool.open_write("/f", ROOT)
        upload.file.write(b"x" * KB)
        committed = upload.commit()
        workers.run_all()  # the commit's disk work
        old = result(committed)
        d = pool.flush(pool.engine.get(old.pnfsid))
        clock.advance(0)
        workers.run_all()
        assert result(d).tape_uri
        opened = pool.open_write("/f", ROOT, replace=True, copy_existing=True)
        assert pool.is_busy(old.pnfsid)
        workers.run_all()
        upload = result(opened)
        assert not pool.is_busy(old.pnfsid)
        upload.abort()
    finally:
        pool.namespace.close()


def test_the_flush_policy_leaves_disk_only_files_on_disk(pools, clock):
    pool = pools(flush_after=60, sweep_interval=10)
    pool.start_management()
    store(pool, "/replica", access_latency="ONLINE", retention_policy="REPLICA")
    store(pool, "/custodial", access_latency="NEARLINE", retention_policy="CUSTODIAL")
    clock.advance(120)
    assert state(pool, "/custodial") == "disk+tape"
    assert state(pool, "/replica") == "disk"
    # never even tried: no failed flush waiting to be tried again
    assert pool.flusher._backoff == {}
