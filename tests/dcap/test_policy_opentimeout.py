"""Open deadlines and the keep-alive pass, on task.Clock."""

from twisted.internet.task import Clock

from distcache.dcap.opentimeout import OpenTimeouts, Phase


class Recorder:
    def __init__(self):
        self.events = []

    def waiting(self, session):
        return lambda: self.events.append(("failed112", session))

    def reading(self, session):
        return lambda: self.events.append(("interrupt", session))


def make(keep_alive=5):
    clock = Clock()
    timeouts = OpenTimeouts(clock, keep_alive)
    timeouts.start()
    return clock, timeouts, Recorder()


def watch(timeouts, rec, session, timeout):
    return timeouts.watch(session, timeout, rec.waiting(session), rec.reading(session))


def test_waiting_open_fails_at_first_pass_after_deadline():
    clock, timeouts, rec = make(keep_alive=5)
    watch(timeouts, rec, 1, 7)
    clock.advance(5)
    assert rec.events == []
    clock.advance(5)  # pass at t=10 is the first one after the deadline (7)
    assert rec.events == [("failed112", 1)]
    assert len(timeouts) == 0
    clock.advance(50)
    assert rec.events == [("failed112", 1)]


def test_read_flowing_at_deadline_is_interrupted():
    clock, timeouts, rec = make(keep_alive=1)
    w = watch(timeouts, rec, 2, 2)
    clock.advance(1)
    w.transfer_started(writing=False)
    assert w.phase is Phase.READING
    clock.advance(1)
    assert rec.events == [("interrupt", 2)]


def test_write_in_flight_is_not_cut():
    clock, timeouts, rec = make(keep_alive=1)
    w = watch(timeouts, rec, 3, 2)
    w.transfer_started(writing=True)
    clock.advance(10)
    assert rec.events == []
    assert len(timeouts) == 0


def test_finished_open_is_forgotten():
    clock, timeouts, rec = make(keep_alive=1)
    w = watch(timeouts, rec, 4, 1)
    w.finished()
    clock.advance(5)
    assert rec.events == [] and len(timeouts) == 0


def test_no_keep_alive_means_no_enforcement():
    clock, timeouts, rec = make(keep_alive=None)
    assert watch(timeouts, rec, 5, 1) is None
    assert clock.getDelayedCalls() == []


def test_no_timeout_means_no_watch():
    clock, timeouts, rec = make()
    assert watch(timeouts, rec, 6, None) is None


def test_several_opens_expire_in_deadline_order():
    clock, timeouts, rec = make(keep_alive=10)
    watch(timeouts, rec, 8, 3)
    watch(timeouts, rec, 7, 2)
    watch(timeouts, rec, 9, 30)
    clock.advance(10)
    assert rec.events == [("failed112", 7), ("failed112", 8)]


def test_a_failing_handler_does_not_stop_the_pass():
    clock, timeouts, rec = make(keep_alive=1)

    def boom():
        raise RuntimeError("gone")

    timeouts.watch(1, 1, boom, boom)
    watch(timeouts, rec, 2, 1)
    clock.advance(1)
    assert rec.events == [("failed112", 2)]


def test_stop_ends_the_pass():
    clock, timeouts, rec = make(keep_alive=1)
    watch(timeouts, rec, 1, 1)
    timeouts.stop()
    clock.advance(5)
    assert rec.events == []
    assert clock.getDelayedCalls() == []
