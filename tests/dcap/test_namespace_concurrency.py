"""Two door processes on one namespace: writes serialise, nothing is lost."""

import multiprocessing

from distcache.dcap.errors import DcapError
from distcache.dcap.namespace import ROOT
from distcache.dcap.sqlite_namespace import open_namespace


def _worker(root, tag, count, results):
    ns = open_namespace(root)
    won = 0
    for i in range(count):
        ticket = ns.prepare_write("/shared/%s-%d" % (tag, i), ROOT)
        ns.commit_write(ticket, i, 1, "pool1", lambda pnfsid: None)
        try:
            ns.mkdir("/shared/race-%d" % i, ROOT)
            won += 1
        except DcapError as e:
            assert e.rc == 20
    ns.close()
    results.put((tag, won))


def test_two_processes_share_one_namespace(tmp_path):
    root = str(tmp_path / "root")
    ns = open_namespace(root)
    ns.mkdir("/shared", ROOT)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    count = 40
    workers = [ctx.Process(target=_worker, args=(root, tag, count, results))
               for tag in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    wins = dict(results.get(timeout=5) for _ in workers)
    names = [e.name for e in ns.listdir("/shared", ROOT)]
    files = [n for n in names if not n.startswith("race-")]
    races = [n for n in names if n.startswith("race-")]
    assert len(files) == 2 * count
    assert len(races) == count
    assert wins["a"] + wins["b"] == count
    inos = [e.ino for e in ns.listdir("/shared", ROOT)]
    assert len(set(inos)) == len(inos)
    ns.close()
