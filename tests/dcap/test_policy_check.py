"""Strict and fuzzy answers to check."""

from dataclasses import dataclass

from distcache.dcap.check import has_disk_copy


@dataclass
class FakeEntry:
    on_disk: bool
    pool: object = "pool1"
    is_file: bool = True


class FakePool:
    def __init__(self, directory, name="pool1", cached=True):
        self.name = name
        self.data_dir = str(directory)
        self.cached = cached

    def is_cached(self, entry):
        return self.cached


def test_fuzzy_trusts_the_namespace(tmp_path):
    nothing = FakePool(tmp_path, cached=False)
    assert has_disk_copy(FakeEntry(on_disk=True), [nothing], strict=False)
    assert not has_disk_copy(FakeEntry(on_disk=False), [nothing], strict=False)


def test_strict_looks_at_the_pool(tmp_path):
    assert has_disk_copy(FakeEntry(on_disk=False), [FakePool(tmp_path)], strict=True)
    assert not has_disk_copy(
        FakeEntry(on_disk=True), [FakePool(tmp_path, cached=False)], strict=True)


def test_strict_pool_down_or_other_pool(tmp_path):
    down = FakePool(tmp_path / "gone")
    assert not has_disk_copy(FakeEntry(on_disk=True), [down], strict=True)
    other = FakePool(tmp_path, name="pool2")
    assert not has_disk_copy(FakeEntry(on_disk=True), [other], strict=True)
    assert has_disk_copy(FakeEntry(on_disk=True, pool=None), [other], strict=True)


def test_directories_are_never_cached(tmp_path):
    d = FakeEntry(on_disk=True, is_file=False)
    assert not has_disk_copy(d, [FakePool(tmp_path)], strict=False)
    assert not has_disk_copy(d, [FakePool(tmp_path)], strict=True)

