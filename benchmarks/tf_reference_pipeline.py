"""The YT8M starter's frame-level input pipeline in TensorFlow: the reference for data_throughput.

Run by benchmarks/data_throughput.py with --reference_python (a Python that has TensorFlow; vmjax
itself never imports it). Mirrors the starter's readers.py YT8MFrameFeatureReader:
tf.data TFRecordDataset -> parse_single_sequence_example -> decode_raw -> dequantize ->
pad/truncate to max_frames -> dense labels -> batch.

    python benchmarks/tf_reference_pipeline.py --pattern GLOB --seconds 20 [--threads 1]
Prints `videos_per_s X` (and `videos X`, `seconds X`).
"""

import argparse
import glob
import time

import tensorflow as tf


def dequantize(x, max_quantized_value=2.0, min_quantized_value=-2.0):
    """The starter's utils.Dequantize: (x * scalar + bias) with a half-bin offset."""
    quantized_range = max_quantized_value - min_quantized_value
    scalar = quantized_range / 255.0
    bias = (quantized_range / 512.0) + min_quantized_value
    return x * scalar + bias


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", required=True)
    parser.add_argument("--level", default="frame", choices=["frame", "video"])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--max_frames", type=int, default=300)
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=0, help="tf threads (0 = TF's default)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    files = sorted(glob.glob(args.pattern))
    if not files:
        raise SystemExit(f"no files match {args.pattern}")

    def parse_frame(serialized):
        context, features = tf.io.parse_single_sequence_example(
            serialized,
            context_features={
                "id": tf.io.FixedLenFeature([], tf.string),
                "labels": tf.io.VarLenFeature(tf.int64),
            },
            sequence_features={
                key: tf.io.FixedLenSequenceFeature([], dtype=tf.string) for key in ("rgb", "audio")
            },
        )
        out = {"id": context["id"]}
        for key, dim in (("rgb", 1024), ("audio", 128)):
            x = tf.reshape(
                tf.cast(tf.io.decode_raw(features[key], tf.uint8), tf.float32), [-1, dim]
            )
            x = dequantize(x[: args.max_frames])
            pad = args.max_frames - tf.shape(x)[0]
            out[key] = tf.pad(x, [[0, pad], [0, 0]])
        out["num_frames"] = tf.minimum(tf.shape(features["rgb"])[0], args.max_frames)
        out["labels"] = tf.scatter_nd(
            tf.expand_dims(context["labels"].values, -1),
            tf.ones_like(context["labels"].values, tf.bool),
            [args.num_classes],
        )
        return out

    def parse_video(serialized):
        f = tf.io.parse_single_example(
            serialized,
            {
                "id": tf.io.FixedLenFeature([], tf.string),
                "labels": tf.io.VarLenFeature(tf.int64),
                "mean_rgb": tf.io.FixedLenFeature([1024], tf.float32),
                "mean_audio": tf.io.FixedLenFeature([128], tf.float32),
            },
        )
        labels = tf.scatter_nd(
            tf.expand_dims(f["labels"].values, -1),
            tf.ones_like(f["labels"].values, tf.bool),
            [args.num_classes],
        )
        return {"id": f["id"], "rgb": f["mean_rgb"], "audio": f["mean_audio"], "labels": labels}

    parse = parse_frame if args.level == "frame" else parse_video
    ds = tf.data.TFRecordDataset(files).repeat()
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(args.batch_size, drop_remainder=True).prefetch(2)
    it = iter(ds)
    next(it)  # start-up (tracing, first batch) is not timed
    videos, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        next(it)
        videos += args.batch_size
    seconds = time.perf_counter() - start
    print(f"videos {videos}\nseconds {seconds:.2f}\nvideos_per_s {videos / seconds:.1f}")


if __name__ == "__main__":
    main()
