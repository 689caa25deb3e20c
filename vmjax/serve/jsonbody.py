"""JSON request bodies -> model input rows: a video object, or a list of them (InputSpec.describe).

Read by jsonscan.JsonReader, with the schema known up front: each list of numbers goes straight
into a float32 array, frames past max_frames are checked and dropped as they are read, and the
first problem found is answered (400 for JSON syntax, 422 for the wrong shape or values), so a
request's memory stays a small multiple of its body and no input makes a Python object per number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from vmjax.data import yt8m
from vmjax.serve.errors import RequestError
from vmjax.serve.inputs import InputSpec, Videos, collate, frames_as
from vmjax.serve.jsonscan import JsonReader, Token

# A JSON video's keys: features, an optional id, and `quantized` (frames given as uint8 levels).
KEYS = ("rgb", "audio", "id", "quantized", "text_tokens")
_DIMS = {"rgb": yt8m.RGB_DIM, "audio": yt8m.AUDIO_DIM}


def parse_json(body: bytes, spec: InputSpec, deadline: float | None = None) -> Videos:
    """Videos from a JSON object of features, or a list of them.

    deadline: a time.monotonic() after which reading stops (the request was answered 503).
    """
    r = JsonReader(body, deadline)
    tok = r.next()
    videos: list[tuple[str | None, dict]] = []
    if tok.kind == "[":
        tok = r.next()
        while True:
            videos.append(_video(r, tok, f"JSON video {len(videos)}", 1, spec))
            tok = r.next()
            if tok.kind == "]":
                break
            if tok.kind != ",":
                raise r.unexpected(tok, "',' or ']' after a video")
            tok = r.next()
    elif tok.kind == "numbers" and not len(r.numbers(tok, np.float32)):
        raise RequestError(400, "the JSON body is an empty list: expected at least one video")
    else:
        videos.append(_video(r, tok, "JSON body", 0, spec))
    r.finish()
    return collate([ex for _, ex in videos], [video_id for video_id, _ in videos], spec)


def _video(
    r: JsonReader, tok: Token, where: str, depth: int, spec: InputSpec
) -> tuple[str | None, dict]:
    """(id, pipeline example) of one video object; depth 1 inside the body's list."""
    if tok.kind != "{":
        what = r.skip(tok, depth, in_list=depth > 0)
        raise RequestError(422, f"{where} is {what}; expected an object: {spec.describe()}")
    fields: dict[str, Any] = {}
    tok = r.next()
    while tok.kind != "}":
        if tok.kind != "string":
            raise r.unexpected(tok, "a key (a string) or '}'")
        key = r.string(tok)
        r.expect(":", "':' after the key")
        value = r.next()
        if key not in KEYS or key in fields:
            r.skip(value, depth + 1)  # a syntax error in it is the first problem
            if key in fields:
                raise RequestError(422, f"{where}: key {key!r} appears twice")
            raise RequestError(
                422, f"{where}: unknown key {key!r}; expected keys among {list(KEYS)}"
            )
        fields[key] = _READERS[key](r, value, f"{where}: '{key}'", depth + 1, spec)
        tok = r.next()
        if tok.kind == ",":
            tok = r.expect("string", "a key after ','")
        elif tok.kind != "}":
            raise r.unexpected(tok, "',' or '}' after a value")
    return fields.get("id"), _example(fields, where, spec)


def _example(fields: dict[str, Any], where: str, spec: InputSpec) -> dict[str, Any]:
    """A pipeline example; a feature the model does not read may be left out (an encoder tower
    of rgb or audio alone), and is not kept when given."""
    for key in spec.features:
        if key not in fields:
            raise RequestError(422, f"{where}: '{key}' is missing; expected {spec.describe()}")
    quantized = fields.get("quantized", False)
    if quantized and spec.level == "video":
        raise RequestError(422, f"{where}: 'quantized' applies to frame-level models only")
    if "rgb" in fields and "audio" in fields and fields["rgb"][1] != fields["audio"][1]:
        raise RequestError(
            422,
            f"{where}: 'rgb' has {fields['rgb'][1]} frames but 'audio' has {fields['audio'][1]}",
        )
    frames = fields[spec.features[0]][0].shape[0] if spec.level == "frame" else 0
    out = {}
    for key in _DIMS:
        if key not in spec.inputs:
            out[key] = spec.unread(frames)
        elif spec.level == "frame":
            x = fields[key][0]
            out[key] = _frames(x, f"{where}: '{key}'", quantized, spec.inputs[key][1])
        else:
            out[key] = fields[key][0]
    out["text_tokens"] = _tokens(fields.get("text_tokens", np.zeros(0)), where, spec)
    return out


def _read_id(r: JsonReader, tok: Token, name: str, depth: int, spec: InputSpec) -> str | None:
    if tok.kind == "string":
        return r.string(tok)
    if tok.kind == "null":
        return None
    raise RequestError(422, f"{name} is {r.skip(tok, depth)}; expected a string")


def _read_quantized(r: JsonReader, tok: Token, name: str, depth: int, spec: InputSpec) -> bool:
    if tok.kind in ("true", "false"):
        return tok.kind == "true"
    raise RequestError(422, f"{name} is {r.skip(tok, depth)}; it must be true or false")


def _read_tokens(r: JsonReader, tok: Token, name: str, depth: int, spec: InputSpec) -> np.ndarray:
    if tok.kind != "numbers":
        raise RequestError(422, f"{name} is {r.skip(tok, depth)}; expected a list of integers")
    return r.numbers(tok, np.float64)  # float64 holds every int32 token id exactly


def _read_features(
    r: JsonReader, tok: Token, name: str, depth: int, spec: InputSpec, dim: int
) -> tuple[np.ndarray, int]:
    """(float32 features, frame count): [dim] at video level (count 1), else the first
    max_frames frames [t, dim] of however many the list holds."""
    if spec.level == "video":
        if tok.kind != "numbers":
            what = r.skip(tok, depth)
            raise RequestError(422, f"{name} is {what}; expected {dim} numbers (video-level model)")
        x = r.numbers(tok, np.float32)
        if len(x) != dim:
            raise RequestError(
                422, f"{name} has shape [{len(x)}]; expected {dim} values (video-level model)"
            )
        _check_finite(x, name, ())
        return x, 1
    expected = f"expected [frames, {dim}] (frame-level model)"
    if tok.kind == "numbers":  # flat: only [] (a video without frames, as records may have)
        x = r.numbers(tok, np.float32)
        if len(x):
            raise RequestError(422, f"{name} has shape [{len(x)}]; {expected}")
        return np.zeros((0, dim), np.float32), 0
    if tok.kind != "[":
        raise RequestError(422, f"{name} is {r.skip(tok, depth)}; {expected}")
    kept: list[np.ndarray] = []
    count = 0
    tok = r.next()
    while True:
        if tok.kind != "numbers":
            what = r.skip(tok, depth + 1, in_list=True)
            raise RequestError(422, f"{name} frame {count} is {what}; expected {dim} numbers")
        row = r.numbers(tok, np.float32)
        if len(row) != dim:
            raise RequestError(422, f"{name} frame {count} has {len(row)} values; expected {dim}")
        _check_finite(row, name, (count,))
        if count < spec.max_frames:  # the first max_frames frames, as evaluation reads records
            kept.append(row)
        count += 1
        tok = r.next()
        if tok.kind == "]":
            return np.stack(kept), count
        if tok.kind != ",":
            raise r.unexpected(tok, "',' or ']' after a frame")
        tok = r.next()


_READERS: dict[str, Callable[[JsonReader, Token, str, int, InputSpec], Any]] = {
    "rgb": functools.partial(_read_features, dim=yt8m.RGB_DIM),
    "audio": functools.partial(_read_features, dim=yt8m.AUDIO_DIM),
    "id": _read_id,
    "quantized": _read_quantized,
    "text_tokens": _read_tokens,
}


def _check_finite(x: np.ndarray, name: str, at: tuple[int, ...]) -> None:
    # Values past float32's range (1e39) are read as inf and refused here too.
    if not np.isfinite(x).all():
        j = int(np.argmax(~np.isfinite(x)))
        raise RequestError(422, f"{name} has a non-finite value {x[j]} at {(*at, j)}")


def _frames(x: np.ndarray, name: str, quantized: bool, dtype: np.dtype) -> np.ndarray:
    if not quantized:
        return frames_as(x, dtype)
    if ((x < 0) | (x > 255) | (x != np.round(x))).any():
        raise RequestError(
            422, f"{name} is marked quantized but holds values outside 0..255 or non-integers"
        )
    return frames_as(x.astype(np.uint8), dtype)


def _tokens(tokens: np.ndarray, where: str, spec: InputSpec) -> np.ndarray:
    t = tokens[: spec.max_text_tokens]
    if (t != np.round(t)).any() or ((t < 0) | (t >= spec.text_vocab_size)).any():
        raise RequestError(
            422, f"{where}: 'text_tokens' must be integers in [0, {spec.text_vocab_size})"
        )
    return t.astype(np.int64)
