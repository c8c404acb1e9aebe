"""The example configuration files in conf/ are valid."""

from pathlib import Path

from distcache.dcap.batchfile import read_batch
from distcache.dcap.policy import MiB, resolve_policy
from distcache.dcap.poollist import read_poollist

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_example_batch_and_poollist_resolve():
    batch = read_batch(CONF / "dcap.batch")
    pools = read_poollist(CONF / "pools.poollist")
    policy = resolve_policy(batch, pools)
    assert (policy.open_timeout, policy.keep_alive, policy.strict_check) == (300, 60, True)
    assert policy.buffers_for("pool1").max_send == MiB
    assert batch.ignored == []
