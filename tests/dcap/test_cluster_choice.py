"""Where a new file goes when several pools share a namespace."""

from distcache.dcap.cluster import PoolNode, choose_pool

GB = 1 << 30


def nodes(*specs):
    return [PoolNode(name, "h", 22125, free, age) for name, free, age in specs]


def test_the_pool_with_the_most_room_takes_new_files():
    assert choose_pool("a", 10 * GB, nodes(("b", 50 * GB, 1), ("c", 30 * GB, 1)), 15) == "b"


def test_the_local_pool_keeps_new_files_on_a_tie_or_a_small_difference():
    assert choose_pool("a", 10 * GB, nodes(("b", 10 * GB, 1)), 15) == "a"
    assert choose_pool("a", 100 * GB, nodes(("b", 104 * GB, 1)), 15) == "a"
    assert choose_pool("a", 100 * GB, nodes(("b", 106 * GB, 1)), 15) == "b"


def test_pools_whose_heartbeat_stopped_take_nothing():
    assert choose_pool("a", 1 * GB, nodes(("b", 50 * GB, 15), ("c", 9 * GB, 14.9)), 15) == "c"


def test_the_local_entry_in_the_registry_is_not_compared_with_itself():
    assert choose_pool("a", 1 * GB, nodes(("a", 500 * GB, 1)), 15) == "a"
