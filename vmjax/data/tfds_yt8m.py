"""The `yt8m` TFDS dataset: YouTube-8M records stored unchanged in ArrayRecord files.

Each example is {'record': the original serialized tf.train.Example (video level) or
SequenceExample (frame level)}, so every field survives bit for bit and `vmjax.data.yt8m`
decodes it as it decodes TFRecord shards. A dataset directory holds `dataset_info.json`,
`features.json` and `yt8m-<split>.array_record-NNNNN-of-MMMMM` shards; config `frame` or
`video` says which level it holds.

Two writers produce that layout:
- `python -m vmjax.data.convert` (the supported path): streams one split at a time into the
  directory you name, keeps the input record order, one output shard per input file (or
  `--num_shards`), `--workers` in parallel, no TensorFlow.
- this builder, `Yt8m`, with the manual-download files. `tfds build` (the CLI) imports
  TensorFlow at start-up in tensorflow-datasets 4.9.10, so without TF call it from Python:

      builder = Yt8m(config="video", data_dir=ROOT)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))

  which writes ROOT/yt8m/video/1.0.0/ without TensorFlow. TFDS's writer runs in one process
  and hash-shuffles through temporary buckets (twice the disk while it runs): fine for the
  31 GB of video-level data, slow for the 1.5 TB of frame-level data, where convert.py is
  the tool. With TensorFlow installed, `tfds build vmjax/data/tfds_yt8m.py --config frame
  --manual_dir MANUAL_DIR --data_dir ROOT` should do the same (untested: no TF here).

Either way, `tfds.builder_from_directory(DIR).as_data_source(split)` reads the shards without
TensorFlow; `vmjax.data.indexed.open_source` wraps that for the training pipeline.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import dataset_info as dataset_info_lib

from vmjax.data import tfrecord, wire, yt8m

NAME = "yt8m"
VERSION = "1.0.0"
LEVELS = ("frame", "video")
SPLITS = ("train", "validate", "test")
FILE_FORMAT = "array_record"
# TFDS's default shard naming: yt8m-train.array_record-00000-of-00010.
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
DECODERS = {"frame": yt8m.decode_frame_example, "video": yt8m.decode_video_example}

RELEASE_NOTES = {VERSION: "Original records stored unchanged in a 'record' bytes feature."}
DESCRIPTION = (
    "YouTube-8M records (https://research.google.com/youtube8m/) stored unchanged: 'record' "
    "holds each original serialized tf.train.Example (video level) or tf.train.SequenceExample "
    "(frame level). Decode with vmjax.data.yt8m."
)
CONFIG_DESCRIPTIONS = {
    "frame": "Frame-level SequenceExamples: id, labels, rgb/audio per second (uint8 bytes).",
    "video": "Video-level Examples: id, labels, mean_rgb (1024 floats), mean_audio (128 floats).",
}


def features() -> tfds.features.FeaturesDict:
    """{'record': bytes}: tfds's Scalar(tf.string), written and read without TensorFlow."""
    return tfds.features.FeaturesDict(
        {
            "record": tfds.features.Scalar(
                dtype=np.object_, doc="The original serialized YouTube-8M proto."
            )
        }
    )


def _ld(payload_len: int) -> bytes:
    """Tag of field 1 (wire type 2) and a length: how each nesting level below starts."""
    return b"\x0a" + wire.varint(payload_len)


# Example{1: Features{1: map entry {1: "record", 2: Feature{1: BytesList{1: payload}}}}}.
_KEY = b"\x0a\x06record"


def wrap(payload: bytes) -> bytes:
    """The serialized tf.train.Example {'record': payload}, as TFDS writes it, without a copy
    through protobuf (which costs more than decoding the record). Tests check it against
    `features().serialize_example`."""
    value = _ld(len(payload))
    bytes_list = _ld(len(value) + len(payload))
    feature = b"\x12" + wire.varint(len(bytes_list) + len(value) + len(payload))
    entry_len = len(_KEY) + len(feature) + len(bytes_list) + len(value) + len(payload)
    entry = _ld(entry_len)
    example = _ld(len(entry) + entry_len)
    return b"".join((example, entry, _KEY, feature, bytes_list, value, payload))


def unwrap(data: bytes) -> bytes | None:
    """The payload of an Example laid out as `wrap` writes it; None for any other layout."""
    try:
        pos = 0
        for expected in (b"\x0a", b"\x0a", _KEY + b"\x12", b"\x0a", b"\x0a"):
            if data[pos : pos + len(expected)] != expected:
                return None
            length, pos = wire.read_varint(data, pos + len(expected))
            if pos + length != len(data):  # each level ends where the record ends
                return None
        return data[pos:]
    except (IndexError, ValueError):
        return None


def make_info(
    builder: tfds.core.DatasetBuilder | dataset_info_lib.DatasetIdentity,
    split_dict: tfds.core.SplitDict | None = None,
) -> tfds.core.DatasetInfo:
    """The DatasetInfo both writers store (the builder's and convert.py's)."""
    info = tfds.core.DatasetInfo(
        builder=builder,
        description=DESCRIPTION,
        features=features(),
        homepage="https://research.google.com/youtube8m/",
        split_dict=split_dict,
    )
    info.set_file_format(FILE_FORMAT)
    return info


def identity(level: str, data_dir: str) -> dataset_info_lib.DatasetIdentity:
    """Who wrote a dataset directory, as the builder would say it (name, version, config)."""
    return dataset_info_lib.DatasetIdentity(
        name=NAME,
        version=tfds.core.Version(VERSION),
        data_dir=data_dir,
        module_name=__name__,
        config_name=level,
        config_description=CONFIG_DESCRIPTIONS[level],
        release_notes=RELEASE_NOTES,
    )


def split_files(directory: str) -> dict[str, list[str]]:
    """Split name -> sorted `<split>*.tfrecord` files in `directory`, for splits that have any."""
    out = {}
    for split in SPLITS:
        files = sorted(glob.glob(os.path.join(directory, f"{split}*.tfrecord")))
        if files:
            out[split] = files
    return out


class Yt8m(tfds.core.GeneratorBasedBuilder):
    """YouTube-8M frame- or video-level records, unchanged, in ArrayRecord files."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = RELEASE_NOTES
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=level, description=CONFIG_DESCRIPTIONS[level])
        for level in LEVELS
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the YouTube-8M TFRecord shards (https://research.google.com/youtube8m/download.html),
    e.g. `curl data.yt8m.org/download.py | partition=2/frame/train mirror=us python` run inside
    <manual_dir>/frame (and the same with video/ for video-level data). The builder reads
    <manual_dir>/<config>/ if it exists, else <manual_dir> itself, and makes one split of each
    of train*.tfrecord, validate*.tfrecord and test*.tfrecord it finds there.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup touches `importlib_resources`, a backport it only installs
        # for Python < 3.9, and fails without it.
        return epath.Path(__file__)

    def __init__(self, *, file_format: str | None = None, **kwargs):
        # TFRecord output would need TensorFlow to read back; ArrayRecord gives random access.
        super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return make_info(self)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        level_dir = os.path.join(root, self.builder_config.name)
        directory = level_dir if os.path.isdir(level_dir) else root
        splits = split_files(directory)
        if not splits:
            raise FileNotFoundError(
                f"no train*/validate*/test*.tfrecord files in {directory}; "
                f"expected YouTube-8M {self.builder_config.name}-level shards there"
            )
        return {split: self._generate_examples(files) for split, files in splits.items()}

    def _generate_examples(self, files: list[str]):
        decode = DECODERS[self.builder_config.name]
        for path in files:
            name = os.path.basename(path)
            for index, offset, payload in tfrecord.read_records(path):
                # Decoding validates the record; a bad one stops the build naming file/record/field.
                decode(payload, path=path, index=index, offset=offset)
                yield f"{name}:{index}", {"record": payload}
