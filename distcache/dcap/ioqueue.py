"""Named mover queues: how many movers of each may run at once.

An operator names queues with limits (``--io-queue NAME=LIMIT``); an open
that asks for one (``-io-queue=NAME``) waits in it until fewer than LIMIT of
its movers run.  An open that names no queue, or a queue this door does not
have, goes to the default queue, which has no limit: dCache's pool does the
same with a queue name it does not know.  Waiting opens are served in the
order they came; a wait that is cancelled (the open's deadline passed, its
client left) leaves the queue.
"""

from __future__ import annotations

from collections import deque
from typing import Dict, Mapping, Optional, Tuple

from twisted.internet import defer

#: The queue of opens that name none (or a queue that does not exist).
DEFAULT_QUEUE = "default"


def parse_queue(text: str) -> Tuple[str, int]:
    """NAME=LIMIT as (name, limit); ValueError naming what is wrong."""
    name, sep, limit = text.partition("=")
    name = name.strip()
    if not sep or not name or not limit.strip().isdigit() or int(limit) < 1:
        raise ValueError("an io queue is NAME=LIMIT with a limit of at least 1, not %r" % (text,))
    if name == DEFAULT_QUEUE:
        raise ValueError("the %s queue has no limit and cannot be defined" % (DEFAULT_QUEUE,))
    return name, int(limit)


class Slot:
    """A running mover's place in its queue; release() gives it back (once)."""

    def __init__(self, queue: "MoverQueue"):
        self.queue = queue
        self.released = False

    @property
    def name(self) -> str:
        return self.queue.name

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.queue._released()


class MoverQueue:
    """One named queue: at most `limit` slots out (None: no limit), the rest waiting."""

    def __init__(self, name: str, limit: Optional[int]):
        self.name = name
        self.limit = limit
        self.running = 0
        self.waiting: deque = deque()

    def acquire(self) -> defer.Deferred:
        """A Deferred firing with a Slot; cancelling it leaves the queue."""
        if self.limit is None or (self.running < self.limit and not self.waiting):
            self.running += 1
            return defer.succeed(Slot(self))
        d = defer.Deferred(self.waiting.remove)
        self.waiting.append(d)
        return d

    def _released(self) -> None:
        self.running -= 1
        while self.waiting and (self.limit is None or self.running < self.limit):
            self.running += 1
            self.waiting.popleft().callback(Slot(self))


class IoQueues:
    """The door's mover queues by name."""

    def __init__(self, limits: Mapping[str, int] = ()):
        self.queues: Dict[str, MoverQueue] = {DEFAULT_QUEUE: MoverQueue(DEFAULT_QUEUE, None)}
        for name, limit in dict(limits).items():
            self.queues[name] = MoverQueue(name, limit)

    def queue_for(self, name: Optional[str]) -> MoverQueue:
        """The queue an open naming `name` uses: that queue, else the default one."""
        return self.queues.get(name or DEFAULT_QUEUE, self.queues[DEFAULT_QUEUE])
