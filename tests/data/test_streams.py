"""Record interleaving and window shuffle: order, permutations, determinism, exact resume."""

import grain
import pytest

from vmjax.data import streams, tfrecord


def _files(tmp_path, sizes):
    paths = []
    for f, n in enumerate(sizes):
        path = str(tmp_path / f"f{f}.tfrecord")
        tfrecord.write_records(path, [f"{f}:{i}".encode() for i in range(n)])
        paths.append(path)
    return paths


def _payloads(it, n):
    return [next(it)[3].decode() for _ in range(n)]


def test_interleave_is_round_robin_and_refills_from_the_next_file(tmp_path):
    files = grain.MapDataset.source(_files(tmp_path, [2, 3, 1]))
    got = _payloads(iter(streams.InterleavedRecords(files, cycle_length=2)), 6)
    # f0 and f1 alternate; when f0 ends, f2 takes its slot.
    assert got == ["0:0", "1:0", "0:1", "1:1", "2:0", "1:2"]
    with pytest.raises(StopIteration):
        next(iter(streams.InterleavedRecords(grain.MapDataset.source([]), cycle_length=2)))


def test_interleave_reports_where_each_record_came_from(tmp_path):
    paths = _files(tmp_path, [2])
    items = list(streams.InterleavedRecords(grain.MapDataset.source(paths), cycle_length=1))
    assert [(p, i, visit) for p, i, _, _, visit in items] == [(paths[0], 0, 0), (paths[0], 1, 0)]
    assert items[1][2] == 16 + len(b"0:0")  # byte offset of record 1


def test_window_shuffle_permutes_each_window_deterministically(tmp_path):
    source = grain.MapDataset.source(list(range(23))).to_iter_dataset()

    def run(seed):
        return list(streams.WindowShuffle(source, window_size=5, seed=seed))

    a = run(0)
    for w in range(0, 23, 5):  # each window is a permutation of its own elements
        assert sorted(a[w : w + 5]) == list(range(w, min(w + 5, 23)))
    assert a == run(0) and a != run(1) and a != list(range(23))


def test_resume_mid_window_and_mid_file_continues_exactly(tmp_path):
    files = grain.MapDataset.source(_files(tmp_path, [7, 4, 9, 5]))

    def make():
        records = streams.InterleavedRecords(files, cycle_length=3, seed=3, repeat=True)
        return iter(streams.WindowShuffle(records, window_size=6, seed=1))

    it = make()
    _payloads(it, 13)
    state = it.get_state()
    want = _payloads(it, 40)  # crosses windows, files and an epoch
    fresh = make()
    fresh.set_state(state)
    assert _payloads(fresh, 40) == want
    untouched = make()
    untouched.set_state(make().get_state())  # a fresh state restores to the start
    assert _payloads(untouched, 5) == _payloads(make(), 5)


def test_corrupt_record_in_the_interleave_names_the_file(tmp_path):
    paths = _files(tmp_path, [3])
    data = bytearray(open(paths[0], "rb").read())
    data[13] ^= 0xFF  # inside record 0's payload (after its 12-byte header)
    open(paths[0], "wb").write(bytes(data))
    with pytest.raises(tfrecord.RecordError, match="f0.tfrecord"):
        list(streams.InterleavedRecords(grain.MapDataset.source(paths), cycle_length=1))


def test_each_epoch_reads_every_file_once_in_a_seeded_order(tmp_path):
    files = grain.MapDataset.source(_files(tmp_path, [1, 1, 1, 1, 1]))

    def epochs(seed):
        it = iter(streams.InterleavedRecords(files, cycle_length=1, seed=seed, repeat=True))
        return [_payloads(it, 5) for _ in range(3)]

    a = epochs(7)
    assert all(sorted(e) == [f"{f}:0" for f in range(5)] for e in a)
    assert a[0] != a[1] or a[1] != a[2]  # reshuffled per epoch
    assert a == epochs(7) and a != epochs(8)
