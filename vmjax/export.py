"""A trained run -> one file that scores videos with jax and numpy only (no vmjax model code).

python -m vmjax.export --workdir W --out model.npz [--step N] [--batch_size B]

The file is an uncompressed numpy .npz (a zip; np.load reads it without pickle) holding
  header:    JSON (UTF-8 bytes): versions, model, data level, classes, inputs and output;
  exported:  `jax.export` serialization of scores = sigmoid(model(variables, batch));
  param_<i>: the model's variables (params and model_state), flattened in the exported order.
The variables are an argument of the exported function rather than constants inside it: the
StableHLO stays small however large the model, the weights stay plain arrays anyone can inspect,
and `load` only has to pass them back in order.

    predict = vmjax.export.load("model.npz")
    scores = predict({"rgb": rgb, "audio": audio, "mask": mask})  # [b, num_classes] float32

An encoder run (retrieval, audio-visual pretraining) exports one tower per file (--output):
unit embeddings [b, E] of a retrieval run's videos ('video': rgb, audio, mask) or captions
('text': text_tokens, text_mask), or of an audio-visual run's 'rgb' or 'audio' (with the mask).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import jax
import numpy as np

FORMAT = "vmjax.export"
FORMAT_VERSION = 1
# Keys of a pipeline batch that model_inputs reads (vmjax.train.step), in a fixed order.
MODEL_INPUT_KEYS = ("pixels", "rgb", "audio", "mask", "text_tokens", "text_mask")
# Keys a pipeline batch also carries that the model never reads: accepted and ignored by load.
PIPELINE_ONLY_KEYS = ("labels", "weights", "num_frames", "ids")
BATCH = "b"  # the symbolic batch dimension's name in the header
WIDE_ROWS = 4  # load(wide_batches=True): calls from this many rows read the [out, in] kernels
PLATFORMS = ("cpu", "cuda", "tpu")  # export on a TPU/GPU trainer, load on a CPU server (or back)
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


class ExportError(ValueError):
    """A run that cannot be exported, a file that cannot be loaded, or a bad input batch."""


def export(
    workdir: str,
    out: str,
    step: int | None = None,
    batch_size: int | None = None,
    platforms: Sequence[str] = PLATFORMS,
    log: Callable[[str], None] = print,
    output: str | None = None,
) -> dict:
    """Writes the run in `workdir` (its latest checkpoint, or `step`) to `out`; returns the header.

    batch_size: export for this fixed batch size; None (the default) exports a symbolic batch
      dimension, so one file serves any batch size.
    platforms: the backends the file can run on (lowered for each here, none needed present).
    output: what the file computes: a classifier's 'scores' (the default), or one tower of an
      encoder run (ENCODER_OUTPUTS: a retrieval run's 'video' or 'text' embeddings, an
      audio-visual run's 'rgb' or 'audio'; default its first).
    """
    # Model code is imported here, not at module level: `load` must work without it.
    from vmjax import run as run_lib
    from vmjax import trained
    from vmjax.data import pipeline
    from vmjax.data.device import DTYPES, cast_floats, model_inputs
    from vmjax.errors import RunDirectoryError

    if batch_size is not None and batch_size < 1:
        raise ExportError(f"batch_size={batch_size}; expected a positive number (or none)")
    try:
        task = run_lib.Run.open(workdir).config.get("task", "classify")
    except RunDirectoryError as e:
        raise ExportError(str(e)) from None
    if task in ENCODER_OUTPUTS:
        return _export_encoder(task, workdir, out, step, batch_size, platforms, log, output)
    if output not in (None, "scores"):
        raise ExportError(f"output={output!r}: a classifier run exports 'scores'")
    try:
        run = trained.load(workdir, step)
    except RunDirectoryError as e:
        raise ExportError(str(e)) from None
    config, model, step, workdir = run.config, run.model, run.step, run.run.workdir
    ckpt_dir = run.run.checkpoint_dir
    params = run.params
    quantized = "compress" in config and config.compress.method in ("qat", "ptq")
    if quantized:  # the deployed model: int8 kernels (qwix PTQ) from the float checkpoint
        from vmjax.compress import quantization

        example_inputs = trained.example_inputs(config)
        model, params = quantization.deployed(config, model, params, example_inputs)
    d = config.data
    if d.format == "video_files":  # decoded clips: uint8 pixels [b, frames, size, size, 3]
        level = "pixels"
        example = pipeline.config_example_batch(d)
    else:
        level = d.level
        example = pipeline.example_batch(pipeline.BatchSpec.from_config(d).for_eval())
    log(
        f"Run {workdir}: model {config.model.name}, {level}-level data, "
        f"{d.num_classes} classes; restored {os.path.join(ckpt_dir, str(step))} "
        f"(step {step} of {config.num_train_steps})"
    )
    leaves, treedef, kernels = _host_leaves({"params": params, **run.model_state})
    compute_dtype = DTYPES[config.dtype]

    def scores_fn(param_leaves, batch):
        v = dict(jax.tree.unflatten(treedef, param_leaves))
        v["params"] = cast_floats(v["params"], compute_dtype)  # as eval_step computes
        logits = model.apply(v, model_inputs(batch, compute_dtype), train=False)
        return jax.nn.sigmoid(logits.astype(np.float32))

    keys, serialized, platforms_ = _lower(scores_fn, leaves, example, batch_size, platforms, log)
    dim = BATCH if batch_size is None else batch_size
    header = _header(
        config,
        step,
        platforms_,
        keys,
        example,
        dim,
        leaves,
        workdir,
        model=config.model.name,
        data_level=level,  # 'frame' | 'video' (YT8M features) | 'pixels' (decoded clips)
        num_classes=d.num_classes,
        output={"name": "scores", "shape": [dim, d.num_classes], "dtype": "float32"},
        class_names=_class_name_source(config),
        text_vocab_size=int(d.get("text_vocab_size", 0) or 0),  # for the server's checks
        weights=config.compress.weight_dtype if quantized else "float32",
        dense_kernels=kernels,  # param_<i> that are [in, out] Dense kernels (load's wide_batches)
    )
    _write(out, header, serialized, leaves, log)
    return header


def _header(config, step, platforms, keys, example, dim, leaves, workdir, **fields) -> dict:
    """The export header: the fields every exported file has, and `fields` (model, data level,
    classes, output, class names, ...), which say what kind of file it is."""
    from vmjax import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vmjax_version": __version__,
        "jax_version": jax.__version__,
        "step": step,
        "dtype": config.dtype,
        "platforms": platforms,
        "inputs": _inputs(keys, example, dim),
        "ignored_inputs": [k for k in (*MODEL_INPUT_KEYS, *PIPELINE_ONLY_KEYS) if k not in keys],
        "num_variables": len(leaves),
        "num_parameters": int(sum(x.size for x in leaves)),
        "workdir": workdir,
        **fields,
    }


def _host_leaves(variables) -> tuple[list[np.ndarray], object, list[int]]:
    """The variables' leaves as numpy arrays .npz can hold, their treedef, and the indices of
    the float [in, out] Dense kernels among them."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))
    leaves, kernels = [], []
    for path, x in flat:
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":  # e.g. bfloat16 (kind 'V'), which .npz cannot hold
            raise ExportError(
                f"variable {jax.tree_util.keystr(path)} has dtype {x.dtype}; expected a numpy "
                "bool, integer or float dtype"
            )
        last = path[-1]
        if getattr(last, "key", None) == "kernel" and x.ndim == 2 and x.dtype.kind == "f":
            kernels.append(len(leaves))
        leaves.append(x)
    return leaves, treedef, kernels


def _inputs(keys: list[str], example: dict, dim) -> list[dict]:
    return [
        {"name": k, "shape": [dim, *example[k].shape[1:]], "dtype": str(example[k].dtype)}
        for k in keys
    ]


def _lower(fn, leaves, example: dict, batch_size, platforms, log) -> tuple[list, bytes, list]:
    """fn(param_leaves, batch) exported for `platforms`: (input keys it reads, bytes, platforms).

    Inputs the function never reads (e.g. text for a video-only model) are left out, so callers
    need not make them up.
    """
    (b,) = jax.export.symbolic_shape(BATCH) if batch_size is None else (batch_size,)
    keys = [k for k in MODEL_INPUT_KEYS if k in example]
    param_structs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]

    # Inputs the model never reads (e.g. text for a video-only model) are left out, so callers
    # need not make them up: those the traced function passes to no operation.
    structs = {k: jax.ShapeDtypeStruct((1, *example[k].shape[1:]), example[k].dtype) for k in keys}
    jaxpr = jax.make_jaxpr(fn)(param_structs, structs).jaxpr
    read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    input_vars = dict(zip(sorted(keys), jaxpr.invars[len(leaves) :], strict=True))
    unread = [k for k in keys if id(input_vars[k]) not in read]
    if unread:
        log(f"Leaving out inputs the model does not read: {unread}")
        keys = [k for k in keys if k not in unread]
    log(f"Exporting with batch dimension {b} ...")
    structs = {k: jax.ShapeDtypeStruct((b, *example[k].shape[1:]), example[k].dtype) for k in keys}
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(param_structs, structs)
    return keys, bytes(exported.serialize()), list(exported.platforms)


def _write(out: str, header: dict, serialized: bytes, leaves: list, log) -> None:
    arrays = {
        "header": np.frombuffer(json.dumps(header, indent=1).encode(), np.uint8),
        "exported": np.frombuffer(serialized, np.uint8),
    }
    arrays.update({f"param_{i}": x for i, x in enumerate(leaves)})
    _write_atomically(out, arrays)
    size = os.path.getsize(out)
    log(
        f"Wrote {out} ({size / 2**20:.1f} MiB: {header['num_parameters']:,} parameters, "
        f"{len(serialized) / 2**10:.0f} KiB program for {', '.join(header['platforms'])}); "
        "inputs " + ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in header["inputs"])
    )


# An encoder run's towers, each exported as its own file (`output`): unit embeddings [b, E].
ENCODER_OUTPUTS = {"retrieval": ("video", "text"), "audiovisual": ("rgb", "audio")}
TOWER_INPUTS = {
    "video": ("rgb", "audio", "mask"),
    "text": ("text_tokens", "text_mask"),
    "rgb": ("rgb", "mask"),
    "audio": ("audio", "mask"),
}


def _export_encoder(task, workdir, out, step, batch_size, platforms, log, output) -> dict:
    """One tower of a retrieval or audio-visual run: embeddings = tower(variables, batch)."""
    import jax.numpy as jnp

    from vmjax import run as run_lib
    from vmjax.data import pipeline
    from vmjax.data.device import DTYPES, cast_floats, model_inputs
    from vmjax.errors import UserError
    from vmjax.train import audiovisual, contrastive, retrieval

    outputs = ENCODER_OUTPUTS[task]
    output = output or outputs[0]
    if output not in outputs:
        raise ExportError(f"output={output!r}: a {task} run exports one of {outputs}")
    try:
        if task == "retrieval":
            run = retrieval.load_trained(workdir, step=step)
            config, params, step = run.config, run.params, run.step
            model = retrieval.setup(config)[0]
            length = None
            if isinstance(run.tokenizer, retrieval.MiniLMTokenizer):
                length = run.tokenizer.length(config.data.max_caption_tokens)
            example = retrieval.example_batch(config, length=length)
            vocab = int(run.tokenizer.vocab_size)
        else:
            opened = run_lib.Run.open(workdir, task=task)
            config = opened.config
            model, _, place_ = audiovisual.setup(config)
            params, step = contrastive.restore_params(place_, opened, step)
            example = audiovisual.model_batch(pipeline.config_example_batch(config.data))
            vocab = 0
    except UserError as e:
        raise ExportError(str(e)) from None
    workdir = os.path.abspath(os.path.expanduser(workdir))
    log(
        f"Run {workdir}: {task} encoder, its {output} tower; restored step {step} of "
        f"{config.num_train_steps}"
    )
    leaves, treedef, kernels = _host_leaves({"params": params})
    compute_dtype = DTYPES[config.dtype]

    def embed_fn(param_leaves, batch):
        v = dict(jax.tree.unflatten(treedef, param_leaves))
        v["params"] = cast_floats(v["params"], compute_dtype)
        # only the tower's own inputs, so the file asks for no other (see `_lower`)
        inputs = model_inputs({k: batch[k] for k in TOWER_INPUTS[output]}, compute_dtype)
        if task == "retrieval" and output == "text":
            method = retrieval.JointEmbedding.embed_text
            out = model.apply(
                v, inputs["text_tokens"], inputs["text_mask"], train=False, method=method
            )
        elif task == "retrieval":
            method = retrieval.JointEmbedding.embed_video
            out = model.apply(v, inputs, train=False, method=method)
        else:  # each modality's embedding reads only its frames and the mask: zeros elsewhere
            for other in ENCODER_OUTPUTS[task]:
                if other != output:
                    shape = (inputs[output].shape[0], *example[other].shape[1:])
                    inputs[other] = jnp.zeros(shape, compute_dtype)
            out = model.apply(v, inputs, train=False)[output]
        return out.astype(np.float32)

    keys, serialized, platforms_ = _lower(embed_fn, leaves, example, batch_size, platforms, log)
    dim = BATCH if batch_size is None else batch_size
    embed_dim = jax.eval_shape(
        embed_fn,
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
        {k: jax.ShapeDtypeStruct((1, *example[k].shape[1:]), example[k].dtype) for k in keys},
    ).shape[-1]
    header = _header(
        config,
        step,
        platforms_,
        keys,
        example,
        dim,
        leaves,
        workdir,
        task=task,
        model=f"{task} encoder: {output} tower",
        data_level=config.data.level,
        num_classes=None,  # not a classifier (vmjax.serve answers a video tower's embeddings)
        output={"name": f"{output}_embeddings", "shape": [dim, embed_dim], "dtype": "float32"},
        class_names=None,
        text_vocab_size=vocab,
        dense_kernels=kernels,
        weights="float32",
    )
    _write(out, header, serialized, leaves, log)
    return header


def _class_name_source(config) -> str | None:
    d = config.data
    if d.format == "video_files":
        if d.vocabulary:
            return d.vocabulary
        return None if d.train_pattern else "vmjax.data.synthetic_video.CLASSES"
    if not d.train_pattern:
        return "vmjax embedded dataset: vmjax.data.synthetic.load_class_names() (2018 vocabulary)"
    known = {3862: "YouTube-8M 2018 vocabulary.csv", 4716: "YouTube-8M 2017 vocabulary.csv"}
    return known.get(d.num_classes)


def _write_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # a file object: np.savez adds no '.npz' to the name
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_header(path: str) -> dict:
    """The JSON header of an exported file."""
    header, files = _open(path)
    files.close()
    return header


def _open(path: str) -> tuple[dict, np.lib.npyio.NpzFile]:
    """The header and the (lazily read, to be closed) arrays of an exported file."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file (expected a file written by vmjax.export)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # .npz is a zip archive
        raise ExportError(
            f"{path} is not a file written by vmjax.export (not an .npz archive: it starts "
            f"with {magic!r})"
        )
    try:
        files = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ExportError(f"{path} is not a file written by vmjax.export ({e})") from None
    try:
        header = json.loads(bytes(files["header"]).decode())
        if header.get("format") != FORMAT:
            raise ValueError(f"header format {header.get('format')!r}, expected {FORMAT!r}")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"format_version {header.get('format_version')}; this vmjax reads {FORMAT_VERSION}"
            )
    except Exception as e:  # no header, not JSON, not ours
        files.close()
        raise ExportError(f"{path} is not a file written by vmjax.export ({e})") from None
    return header, files


def load(path: str, *, wide_batches: bool = False) -> Callable[[dict], np.ndarray]:
    """The exported function: {input name: array} -> float32 scores [b, num_classes] (or an
    encoder's embeddings [b, E]; header['output'] says which).

    Needs only jax and numpy. Inputs are checked against the header (names, non-batch shapes,
    dtypes); keys a pipeline batch carries that the model does not read are ignored.

    wide_batches (on a CPU): also keep a transposed copy, [out, in], of each Dense kernel
    (header['dense_kernels']; the kernels' memory doubles) and give it to calls of WIDE_ROWS
    rows or more, transposed back inside the jitted call, where XLA folds the transpose into
    the matmul: XLA:CPU multiplies a batch by an [out, in] kernel faster (the moe at 16 rows:
    1.4x). Calls of fewer rows keep the stored layout: for one row XLA would copy the
    transposed kernel on every call. The scores are the same up to float rounding.
    """
    header, files = _open(path)
    with files:
        try:
            exported = jax.export.deserialize(bytearray(files["exported"].tobytes()))
            params = [files[f"param_{i}"] for i in range(header["num_variables"])]
        except Exception as e:
            raise ExportError(
                f"{path}: cannot read the exported program or parameters ({e})"
            ) from None
    inputs = header["inputs"]
    ignored = set(header["ignored_inputs"])
    call = jax.jit(exported.call)
    host, params = params, jax.device_put(params)
    wide = None  # (call, params) for calls of WIDE_ROWS rows or more
    kernels = set(header.get("dense_kernels", ())) if wide_batches else set()
    fixed = {i["shape"][0] for i in inputs if i["shape"][0] != BATCH}
    if fixed and max(fixed) < WIDE_ROWS:  # exported for a batch size below WIDE_ROWS: no call
        kernels = set()  # would read the copies, so none are made
    if kernels and jax.default_backend() == "cpu":
        # Only the kernels get a second copy; every other variable is the array `call` reads.
        flipped = [
            jax.device_put(np.ascontiguousarray(h.T)) if i in kernels else p
            for i, (h, p) in enumerate(zip(host, params, strict=True))
        ]

        def call_flipped(ps, args):
            return exported.call([p.T if i in kernels else p for i, p in enumerate(ps)], args)

        wide = (jax.jit(call_flipped), flipped)

    def predict(batch: dict) -> np.ndarray:
        unknown = sorted(set(batch) - {i["name"] for i in inputs} - ignored)
        if unknown:
            raise ExportError(
                f"{path}: unexpected input key(s) {unknown}; the model takes "
                f"{[i['name'] for i in inputs]}"
            )
        args, rows = {}, None
        for spec in inputs:
            name, shape, dtype = spec["name"], spec["shape"], np.dtype(spec["dtype"])
            if name not in batch:
                raise ExportError(f"{path}: input {name!r} is missing ({_describe(spec)})")
            x = np.asarray(batch[name])
            batch_dim = shape[0]
            if x.ndim != len(shape) or list(x.shape[1:]) != shape[1:] or x.shape[0] < 1:
                raise ExportError(
                    f"{path}: input {name!r} has shape {list(x.shape)}; expected {_describe(spec)}"
                )
            if batch_dim != BATCH and x.shape[0] != batch_dim:
                raise ExportError(
                    f"{path}: input {name!r} has batch size {x.shape[0]}; this file was "
                    f"exported for batch size {batch_dim}"
                )
            if rows is not None and x.shape[0] != rows:
                raise ExportError(
                    f"{path}: input {name!r} has {x.shape[0]} rows; the other inputs have {rows}"
                )
            rows = x.shape[0]
            if x.dtype != dtype:
                raise ExportError(
                    f"{path}: input {name!r} has dtype {x.dtype}; expected {_describe(spec)}"
                )
            args[name] = x
        if wide is not None and rows >= WIDE_ROWS:
            return np.asarray(wide[0](wide[1], args))
        return np.asarray(call(params, args))

    predict.header = header
    predict.wide_rows = WIDE_ROWS if wide is not None else None  # rows that read [out, in]
    return predict


def _describe(spec: dict) -> str:
    return f"{spec['dtype']} [{', '.join(str(s) for s in spec['shape'])}]"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.export",
        description="Export a trained run's model to one file that vmjax.export.load runs with "
        "jax and numpy only: float32 class scores [batch, num_classes] from the batch arrays "
        "the data pipeline produces.",
    )
    parser.add_argument(
        "--workdir", required=True, help="the run directory (config.json, checkpoints/)"
    )
    parser.add_argument("--out", required=True, help="the file to write, e.g. model.npz")
    parser.add_argument(
        "--step", type=int, default=None, help="checkpoint step to export (default: the latest)"
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="export for this fixed batch size (default: a symbolic batch size, any works)",
    )
    parser.add_argument(
        "--platforms",
        default=",".join(PLATFORMS),
        help="comma-separated backends the file will run on (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="what the file computes: a classifier's 'scores' (default), or one tower of an "
        "encoder run: a retrieval run's 'video' (default) or 'text' embeddings, an audio-visual "
        "run's 'rgb' (default) or 'audio'",
    )
    args = parser.parse_args(argv)
    platforms = [p for p in args.platforms.split(",") if p]
    unknown = sorted(set(platforms) - set(KNOWN_PLATFORMS))
    if unknown or not platforms:
        what = f"unknown {', '.join(unknown)}" if unknown else "none given"
        parser.error(
            f"--platforms {args.platforms!r}: {what}; choose from {', '.join(KNOWN_PLATFORMS)}"
        )
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch_size {args.batch_size}: expected >= 1 (or leave it out)")
    from vmjax.errors import UserError

    try:
        export(
            args.workdir,
            args.out,
            step=args.step,
            batch_size=args.batch_size,
            platforms=platforms,
            output=args.output,
        )
    except (ExportError, UserError) as e:  # the user's run or flags: a message, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
