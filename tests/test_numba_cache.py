"""pipeline/numba_cache.py: entries of numba's disk cache that processes save at once stay apart."""
from numba.core.caching import IndexDataCacheFile

import pipeline.numba_cache  # noqa: F401  (installs the save it tests)


def test_entries_two_processes_save_at_once_never_share_a_data_file(tmp_path):
    """Two runs of other seeds starting together compile their decoders at once, and save entries of two keys.
    numba named a new entry's data file by the first number free in the index it had read: both chose the same
    file, and the index could end up pointing one seed's key at the other seed's code (its crops)."""
    first, second, reader = (IndexDataCacheFile(str(tmp_path), "decode", source_stamp=(1.0, 10)) for _ in range(3))
    first._load_index = second._load_index = dict  # both read the index before either wrote it
    pending = []
    first._save_data = lambda name, data: pending.append((name, data))  # the first's data is written last
    first.save(("key", 0), "seed 0's code")
    second.save(("key", 1), "seed 1's code")
    IndexDataCacheFile._save_data(first, *pending.pop())
    assert reader.load(("key", 1)) == "seed 1's code"
    assert reader.load(("key", 0)) in (None, "seed 0's code")  # an entry the race dropped is compiled again
