"""Pool workers whose disk jobs finish only when a test says: a disk as slow as wanted."""

from twisted.internet import defer


class HeldWorkers:
    """Disk jobs wait in ``jobs`` (Deferred, function, args) until run; database work runs inline."""

    def __init__(self):
        self.jobs = []

    def database(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def disk(self, fn, *args):
        d = defer.Deferred()
        self.jobs.append((d, fn, args))
        return d

    def finish(self, order):
        """Run the jobs waiting now, in ``order`` (indexes into them); later ones wait."""
        waiting, self.jobs = self.jobs, []
        for i in order:
            d, fn, args = waiting[i]
            try:
                result = fn(*args)
            except Exception:
                d.errback()
            else:
                d.callback(result)

    def run_one(self):
        """Run the oldest waiting job."""
        d, fn, args = self.jobs.pop(0)
        try:
            result = fn(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)

    def run_all(self):
        while self.jobs:
            self.run_one()
