"""Video-file pipelines: label CSVs, Kinetics layouts, batches, shards, resume, bad files, eval."""

import json
import logging

import numpy as np
import pytest

from vmjax.data import synthetic_video, video, video_files

NUM_CLASSES = len(synthetic_video.CLASSES)
NUM_FRAMES = 4
SIZE = (16, 24)  # 32x32 videos scale to 24x24: the crop may sit anywhere in 9 rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 one-second 32x32 videos at 8 fps (with a tone), and their generator's rows."""
    root = tmp_path_factory.mktemp("videos")
    rows = synthetic_video.generate(root, num_videos=8, seconds=1, size=32, fps=8)
    return root, rows


@pytest.fixture(scope="module")
def items(data):
    root, _ = data
    return video_files.read_label_csv(root / "labels.csv", NUM_CLASSES)


def _dataset(items, *, batch_size=2, train=True, seed=0, process_index=0, process_count=1, **kw):
    return video_files.video_dataset(
        items,
        batch_size=batch_size,
        num_classes=NUM_CLASSES,
        num_frames=NUM_FRAMES,
        size=SIZE,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        train=train,
        **kw,
    )


def _decode(path, crop="center", size=SIZE):
    return video.decode_video(path, num_frames=NUM_FRAMES, size=size, crop=crop, with_audio=False)


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


def _take(it, n):
    return [next(it) for _ in range(n)]


# Label CSVs.


def test_label_csv_gives_the_generators_labels_with_paths_resolved(data):
    root, rows = data
    items = video_files.read_label_csv(root / "labels.csv", NUM_CLASSES)
    assert items == [(str(root / r["path"]), r["labels"]) for r in rows]


def test_label_csv_reads_names_through_the_vocabulary(tmp_path):
    (tmp_path / "vocabulary.csv").write_text("Index,Name\n0,Video game\n1,Car\n2,cat\n")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text(
        "path,labels\n"
        "a.mp4,2 0\n"
        "clips/b.mp4,cat\n"
        "../c.mp4,Video game;Car\n"  # semicolons: names with spaces
        "/abs/d.mp4,Video_game 1\n"  # underscores stand for spaces
        "e.mp4,\n"
    )
    items = video_files.read_label_csv(lists / "train.csv", 3, tmp_path / "vocabulary.csv")
    assert items == [
        (str(lists / "a.mp4"), (2, 0)),
        (str(lists / "clips" / "b.mp4"), (2,)),
        (str(tmp_path / "c.mp4"), (0, 1)),
        ("/abs/d.mp4", (0, 1)),
        (str(lists / "e.mp4"), ()),
    ]


@pytest.mark.parametrize(
    "line, vocabulary, message",
    [
        ("b.mp4,1 dog", True, "line 3: unknown class name 'dog' (not in {vocab})"),
        ("b.mp4,1 3", True, "line 3: class 3 is outside [0, 3)"),
        ("b.mp4,cat", False, "line 3: label 'cat' is not a class index and no vocabulary"),
    ],
)
def test_label_csv_errors_name_the_file_line_and_label(tmp_path, line, vocabulary, message):
    vocab = tmp_path / "vocabulary.csv"
    vocab.write_text("Index,Name\n0,Video game\n1,Car\n2,cat\n")
    path = tmp_path / "train.csv"
    path.write_text(f"path,labels\na.mp4,0\n{line}\n")
    with pytest.raises(ValueError) as e:
        video_files.read_label_csv(path, 3, vocab if vocabulary else None)
    assert str(e.value).startswith(f"{path}, ")
    assert message.format(vocab=vocab) in str(e.value)


def test_label_csv_needs_its_header(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a.mp4,0\n")
    with pytest.raises(ValueError, match="lacks column.*expected path,labels"):
        video_files.read_label_csv(path, 3)


# Kinetics annotations.

KINETICS_CSV = """label,youtube_id,time_start,time_end,split
air drumming,abc,14,24,train
abseiling,def,0,10,train
zumba,ghi,5,15,train
air drumming,jkl,1,11,train
zumba,mno,3,13,train
abseiling,pqr,30,40,train
"""


def test_kinetics_csv_finds_both_layouts_and_reports_missing_files(tmp_path, caplog):
    root = tmp_path / "clips"
    present = {
        "air drumming/abc_000014_000024.mp4",  # <label>/ (the ActivityNet downloader)
        "def_000000_000010.mp4",  # flat (the cvdfoundation archives)
        "zumba/ghi_000005_000015.mp4",
        "air_drumming/jkl_000001_000011.mp4",  # spaces as underscores
    }
    for name in present:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    annotations = tmp_path / "train.csv"
    annotations.write_text(KINETICS_CSV)
    with caplog.at_level(logging.WARNING):
        items = video_files.read_kinetics_csv(annotations, root)
    assert items == [
        (str(root / "air drumming/abc_000014_000024.mp4"), (1,)),
        (str(root / "def_000000_000010.mp4"), (0,)),
        (str(root / "zumba/ghi_000005_000015.mp4"), (2,)),
        (str(root / "air_drumming/jkl_000001_000011.mp4"), (1,)),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 6 clips have no file" in warnings[0]
    assert "zumba/mno_000003_000013.mp4" in warnings[0]
    assert "abseiling/pqr_000030_000040.mp4" in warnings[0]

    assert video_files.kinetics_classes(annotations) == ["abseiling", "air drumming", "zumba"]
    classes = ["zumba", "yoga", "air drumming", "abseiling"]
    items = video_files.read_kinetics_csv(annotations, root, classes)
    assert [labels for _, labels in items] == [(2,), (3,), (0,), (2,)]
    with pytest.raises(ValueError, match=r"train.csv, line 4: label 'zumba' is not one of"):
        video_files.read_kinetics_csv(annotations, root, ["abseiling", "air drumming"])
    with pytest.raises(FileNotFoundError, match=r"train.csv: none of its 6 clips is under"):
        video_files.read_kinetics_csv(annotations, tmp_path / "elsewhere")


# Batches.


def test_train_batches_have_the_shapes_dtypes_labels_and_random_crops(items):
    labels_of = dict(items)
    batches = _take(iter(_dataset(items, batch_size=3)), 6)  # 18 visits: past 2 epochs
    want = video_files.empty_batch(
        batch_size=3, num_classes=NUM_CLASSES, num_frames=NUM_FRAMES, size=SIZE
    )
    tops = set()
    for batch in batches:
        assert batch.keys() == want.keys()
        for k in ("pixels", "mask", "labels", "weights"):
            assert (batch[k].shape, batch[k].dtype) == (want[k].shape, want[k].dtype), k
        np.testing.assert_array_equal(batch["weights"], 1)
        assert batch["mask"].all()  # 8 frames in each video, 4 taken
        for row, path in enumerate(batch["ids"]):
            one_hot = np.zeros(NUM_CLASSES, np.uint8)
            one_hot[list(labels_of[path])] = 1
            np.testing.assert_array_equal(batch["labels"][row], one_hot)
            # A random crop: the same frames at 24x24, cut 16 rows from some top row.
            full = _decode(path, size=(24, 24))["frames"]
            top = [t for t in range(9) if np.array_equal(batch["pixels"][row], full[:, t : t + 16])]
            assert top, path
            tops.add(top[0])
    assert len(tops) > 2


def test_process_shards_are_disjoint_and_together_the_single_process_sequence(items):
    items = items[:7]  # not a multiple of the batch
    paths = [p for p, _ in items]
    steps, batch_size, process_count = 4, 2, 2  # 16 visits: past 2 epochs
    single = _take(iter(_dataset(items, batch_size=batch_size * process_count, seed=5)), steps)
    streams = [
        iter(_dataset(items, seed=5, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    for step in range(steps):
        batches = [next(s) for s in streams]
        for j in range(batch_size * process_count):
            # Process p's row i of the step is global row i * P + p.
            got = batches[j % process_count]
            row = j // process_count
            assert got["ids"][row] == single[step]["ids"][j]
            # Crops are seeded by (seed, epoch, file), so they do not depend on the sharding.
            np.testing.assert_array_equal(got["pixels"][row], single[step]["pixels"][j])
    glued = [path for batch in single for path in batch["ids"]]
    for epoch in (glued[:7], glued[7:14]):
        assert sorted(epoch) == sorted(paths)  # each file once per epoch, over both processes
    assert glued[:7] != glued[7:14]  # a new permutation each epoch
    assert glued[:7] != paths


@pytest.mark.parametrize("kw", [dict(prefetch=0), dict(prefetch=2, read_threads=2)])
def test_resume_from_saved_state_gives_the_same_batches(items, kw):
    it = iter(_dataset(items, batch_size=3, seed=2, **kw))
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
    want = _take(it, 2)
    fresh = iter(_dataset(items, batch_size=3, seed=2, **kw))
    fresh.set_state(state)
    _assert_same_batches(_take(fresh, 2), want)


def test_worker_processes_give_the_same_batches_and_resume(items):
    want = _take(iter(_dataset(items, batch_size=3, seed=4, prefetch=0)), 4)
    it = iter(_dataset(items, batch_size=3, seed=4, prefetch=1, workers=1))
    try:
        _assert_same_batches(_take(it, 2), want[:2])
        state = json.loads(json.dumps(it.get_state()))
    finally:
        it.close()
    fresh = iter(_dataset(items, batch_size=3, seed=4, prefetch=1, workers=1))
    try:
        fresh.set_state(state)
        _assert_same_batches(_take(fresh, 2), want[2:])
    finally:
        fresh.close()


def test_eval_is_one_ordered_centre_cropped_pass_split_over_processes(items):
    paths = [p for p, _ in items]
    seen = []
    for p in range(3):
        block = video_files.eval_slice(len(items), p, 3)  # 2, 3 and 3 files
        batches = list(_dataset(items, train=False, process_index=p, process_count=3))
        assert len(batches) == (len(block) + 1) // 2
        np.testing.assert_array_equal(batches[-1]["weights"], [1, len(block) % 2 == 0])
        got = [path for b in batches for path in b["ids"] if path]
        assert got == paths[block.start : block.stop]
        seen += got
        for batch in batches:
            for row, path in enumerate(batch["ids"]):
                if path:
                    np.testing.assert_array_equal(batch["pixels"][row], _decode(path)["frames"])
                else:
                    assert not batch["pixels"][row].any() and not batch["labels"][row].any()
        again = list(_dataset(items, train=False, process_index=p, process_count=3))
        _assert_same_batches(again, batches)
    assert seen == paths


def test_log_mel_examples_come_with_a_mask(items):
    (batch,) = list(_dataset(items[:2], train=False, log_mel_examples=3))
    assert batch["log_mel"].shape == (2, 3, 96, 64) and batch["log_mel"].dtype == np.float32
    for row, path in enumerate(batch["ids"]):
        want = video.decode_video(path, num_frames=NUM_FRAMES, size=SIZE)["log_mel"][:3]
        assert len(want) >= 1  # one second of audio
        np.testing.assert_array_equal(batch["log_mel_mask"][row], np.arange(3) < len(want))
        np.testing.assert_allclose(batch["log_mel"][row, : len(want)], want, rtol=1e-6)
        assert not batch["log_mel"][row, len(want) :].any()


# Bad input.


def test_unreadable_file_raises_naming_it_or_is_skipped_and_counted(items, tmp_path, caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(3000))
    mixed = [items[0], (str(broken), (1,)), items[1]]
    with pytest.raises(video.VideoError) as e:
        list(_dataset(mixed, batch_size=3, train=False))
    assert e.value.path == str(broken) and str(broken) in str(e.value)

    bad_files = video_files.BadFiles()
    (batch,) = list(
        _dataset(mixed, batch_size=3, train=False, on_error="skip", bad_files=bad_files)
    )
    assert bad_files.count == 1
    np.testing.assert_array_equal(batch["weights"], [1, 1, 0])
    assert list(batch["ids"]) == [items[0][0], items[1][0], ""]
    assert not batch["pixels"][2].any() and not batch["labels"][2].any()
    assert not batch["mask"][2].any()

    bad_files = video_files.BadFiles()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        it = iter(_dataset(mixed, batch_size=3, on_error="skip", bad_files=bad_files))
        batches = _take(it, 3)  # three epochs, the broken file in each
    assert [b["weights"].sum() for b in batches] == [2, 2, 2]
    assert bad_files.count == 1
    logged = [r for r in caplog.records if "Skipping unreadable video" in r.getMessage()]
    assert len(logged) == 1 and str(broken) in logged[0].getMessage()


def test_bad_arguments(items):
    with pytest.raises(ValueError, match="8 videos are fewer than one batch of 3 for each of 3"):
        _dataset(items, batch_size=3, process_count=3)
    with pytest.raises(ValueError, match="process_index 2 is outside"):
        _dataset(items, process_index=2, process_count=2)
    with pytest.raises(ValueError, match=r"/x.mp4: class 11 is outside \[0, 11\)"):
        _dataset([*items, ("/x.mp4", (0, 11))])
    with pytest.raises(ValueError, match="on_error must be one of"):
        _dataset(items, on_error="ignore")
    with pytest.raises(ValueError, match="bad_files counts skipped files"):
        _dataset(items, bad_files=video_files.BadFiles())
    with pytest.raises(ValueError, match="shuffle needs train=True"):
        _dataset(items, train=False, shuffle=True)
    with pytest.raises(ValueError, match="sampling must be one of"):
        _dataset(items, sampling="random")
