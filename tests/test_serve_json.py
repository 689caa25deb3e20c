"""JSON request bodies without a model: the bounded reader accepts what json.loads accepts, the rows
equal a json.loads reference, bad bodies get 4xx with a message, and a large body stays small."""

import json
import time
import tracemalloc

import numpy as np
import pytest

from vmjax.data import yt8m
from vmjax.serve.errors import RequestError
from vmjax.serve.inputs import InputSpec
from vmjax.serve.jsonbody import parse_json
from vmjax.serve.jsonscan import MAX_DEPTH, MAX_LIST_BYTES, JsonReader

MAX_FRAMES = 4
MAX_TOKENS = 3
VOCAB = 50


def video_spec(text: bool = False) -> InputSpec:
    inputs = {"rgb": ((1024,), np.dtype(np.float32)), "audio": ((128,), np.dtype(np.float32))}
    if text:
        inputs["text_tokens"] = ((MAX_TOKENS,), np.dtype(np.int32))
        inputs["text_mask"] = ((MAX_TOKENS,), np.dtype(bool))
    return InputSpec("video", 10, inputs, None, 0, MAX_TOKENS if text else 0, VOCAB)


def frame_spec() -> InputSpec:
    inputs = {
        "rgb": ((MAX_FRAMES, 1024), np.dtype(np.uint8)),
        "audio": ((MAX_FRAMES, 128), np.dtype(np.uint8)),
        "mask": ((MAX_FRAMES,), np.dtype(bool)),
    }
    return InputSpec("frame", 10, inputs, None, MAX_FRAMES, 0, VOCAB)


VALID = [
    "0",
    "-0.5e-3",
    '"a\\u00e9\\n\\"q\\""',
    "true",
    "null",
    "[]",
    "{}",
    " [ 1 , 2.5 ,\n -3E+2 ] ",
    "[1e-05, 10, 0.05, 100]",
    "[[1, 2], [3], []]",
    '{"a": [1, {"b": null}], "c": "d", "e": {}}',
    '[1, "x", true, [2, 3], 4, 5]',
    "NaN",
    "[NaN, Infinity, -Infinity]",
    "[" + ",".join(["1"] * (MAX_LIST_BYTES // 2 + 10)) + "]",  # too long for one token
    "[" * MAX_DEPTH + "]" * MAX_DEPTH,
]
INVALID = [
    "",
    " ",
    "[1,]",
    "[1 2]",
    "[1,,2]",
    "[,1]",
    '{"a":1,}',
    '{"a" 1}',
    '{"a":1,2}',
    "{1: 2}",
    "[.5]",
    "[+1]",
    "[1.]",
    "[01]",
    "[-01]",
    "[1e]",
    "[--1]",
    "[1e5.5]",
    "[0x10]",
    "[nan]",
    "[inf]",
    "[1,2",
    '{"a":1',
    '"abc',
    '"\\x"',
    '"\x01"',
    "tru",
    "[1]]",
    "[1] [2]",
    "-",
    "\ufeff[]",
    '[1, "x", ]',
]


@pytest.mark.parametrize("text", VALID + INVALID)
def test_reader_accepts_what_json_loads_accepts(text):
    try:
        json.loads(text)
        want_ok = True
    except ValueError:
        want_ok = False
    reader = JsonReader(text.encode())
    try:
        reader.skip(reader.next(), 0)
        reader.finish()
        got_ok = True
    except RequestError as e:
        assert e.status == 400 and e.message.startswith("malformed JSON body: "), e.message
        assert " at byte " in e.message
        got_ok = False
    assert got_ok == want_ok


def test_reader_lists_of_numbers_equal_json_loads():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 3, 500), [0.0, -0.0, 1e-05, 123456789.0, 1e300]])
    text = json.dumps(values.tolist())
    reader = JsonReader(text.encode())
    tok = reader.next()
    assert tok.kind == "numbers"
    np.testing.assert_array_equal(reader.numbers(tok, np.float64), np.array(json.loads(text)))
    with np.errstate(over="ignore"):  # 1e300 is inf in float32, read and cast alike
        want = np.array(json.loads(text)).astype(np.float32)
    np.testing.assert_array_equal(reader.numbers(tok, np.float32), want)


def test_deep_nesting_is_400_not_recursion():
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(text)  # what the server did before: a 500
    for body in (text, '{"rgb": ' * 50_000, '[{"rgb": [' + "[" * 100_000):
        with pytest.raises(RequestError) as e:
            parse_json(body.encode(), video_spec())
        assert e.value.status == 400 and f"deeper than {MAX_DEPTH} levels" in e.value.message


def _reference_video_rows(videos: list[dict]) -> dict:
    return {
        "rgb": np.array([v["rgb"] for v in videos], np.float32),
        "audio": np.array([v["audio"] for v in videos], np.float32),
    }


def test_video_level_rows_equal_a_json_loads_reference():
    rng = np.random.default_rng(1)
    videos = [
        {
            "id": f"v{i}",
            "rgb": rng.normal(0, 1, 1024).round(4).tolist(),
            "audio": rng.normal(0, 1, 128).tolist(),
            "text_tokens": [int(t) for t in rng.integers(0, VOCAB, i)],
        }
        for i in range(5)
    ]
    videos[2].pop("id")
    videos[3]["id"] = None
    got = parse_json(json.dumps(videos, indent=1).encode(), video_spec(text=True))
    assert got.ids == ["v0", "v1", None, None, "v4"]
    want = _reference_video_rows(videos)
    np.testing.assert_array_equal(got.rows["rgb"], want["rgb"])
    np.testing.assert_array_equal(got.rows["audio"], want["audio"])
    tokens = np.zeros((5, MAX_TOKENS), np.int32)
    for i, v in enumerate(videos):
        t = v["text_tokens"][:MAX_TOKENS]
        tokens[i, : len(t)] = t
    np.testing.assert_array_equal(got.rows["text_tokens"], tokens)
    lengths = np.array([min(len(v["text_tokens"]), MAX_TOKENS) for v in videos])
    np.testing.assert_array_equal(
        got.rows["text_mask"], np.arange(MAX_TOKENS)[None] < lengths[:, None]
    )
    one = parse_json(json.dumps(videos[1]).encode(), video_spec(text=True))
    np.testing.assert_array_equal(one.rows["rgb"], want["rgb"][1:2])


def test_frame_level_rows_equal_a_json_loads_reference():
    rng = np.random.default_rng(2)
    lengths = [2, MAX_FRAMES + 3, 0]  # frames past MAX_FRAMES are read, checked and dropped
    videos = [
        {"rgb": rng.normal(0, 1, (t, 1024)).tolist(), "audio": rng.normal(0, 1, (t, 128)).tolist()}
        for t in lengths
    ]
    levels = rng.integers(0, 256, (3, 1024)), rng.integers(0, 256, (3, 128))
    videos.append({"quantized": True, "rgb": levels[0].tolist(), "audio": levels[1].tolist()})
    got = parse_json(json.dumps(videos).encode(), frame_spec())
    for key, dim in (("rgb", 1024), ("audio", 128)):
        want = np.zeros((4, MAX_FRAMES, dim), np.uint8)
        for i, v in enumerate(videos):
            frames = np.array(v[key], np.float64).reshape(-1, dim)[:MAX_FRAMES]
            q = frames.astype(np.uint8) if v.get("quantized") else yt8m.quantize(frames)
            want[i, : len(frames)] = q
        np.testing.assert_array_equal(got.rows[key], want)
    np.testing.assert_array_equal(
        got.rows["mask"], np.arange(MAX_FRAMES)[None] < np.array([2, MAX_FRAMES, 0, 3])[:, None]
    )


VIDEO = {"rgb": [0.5] * 1024, "audio": [0.25] * 128}


def _body(x) -> bytes:
    if isinstance(x, str) and x.startswith("{"):
        return x.encode()  # JSON text already
    return x if isinstance(x, bytes) else json.dumps(x).encode()


@pytest.mark.parametrize(
    "level, body, status, words",
    [
        # (the model's level, body, status, words the message must hold)
        ("video", b'{"rgb": [1, 2', 400, ["malformed JSON", "end of the body", "byte 13"]),
        ("video", b"[]", 400, ["empty list"]),
        ("video", b"\xff\xfe", 400, ["malformed JSON", "byte 0"]),
        ("video", b'{"id": "\xff", "rgb": []}', 400, ["not valid UTF-8"]),
        ("video", {**VIDEO, "id": "\ud800"}, 400, ["lone surrogate"]),
        ("video", {**VIDEO, "rgb": [1.0] * 1000}, 422, ["'rgb'", "[1000]", "1024 values"]),
        ("video", {**VIDEO, "rgb": [VIDEO["rgb"]]}, 422, ["'rgb' is a list of lists", "1024"]),
        ("video", {**VIDEO, "rgb": "0.5"}, 422, ["'rgb' is a string"]),
        ("video", {**VIDEO, "rgb": ["0.5"] * 1024}, 422, ["'rgb' is a list of strings"]),
        ("video", {**VIDEO, "audio": [True] * 128}, 422, ["'audio' is a list of booleans"]),
        ("video", {**VIDEO, "audio": {"a": 1}}, 422, ["'audio' is an object"]),
        ("video", {**VIDEO, "rgb": [float("nan")] * 1024}, 422, ["non-finite value nan at (0,)"]),
        ("video", {**VIDEO, "audio": [1e39] * 128}, 422, ["'audio'", "non-finite value inf"]),
        ("video", {"rgb": VIDEO["rgb"]}, 422, ["'audio' is missing"]),
        ("video", {**VIDEO, "id": 7}, 422, ["'id' is a number; expected a string"]),
        ("video", {**VIDEO, "id": "x" * 5000}, 422, ["string of 5000 bytes", "4096"]),
        ("video", {**VIDEO, "quantized": "yes"}, 422, ["'quantized' is a string", "true or false"]),
        ("video", {**VIDEO, "quantized": True}, 422, ["frame-level models only"]),
        ("video", {**VIDEO, "rbg": []}, 422, ["unknown key 'rbg'", "'rgb'"]),
        ("video", json.dumps(VIDEO)[:-1] + ', "rgb": []}', 422, ["key 'rgb' appears twice"]),
        ("video", [VIDEO, 3], 422, ["JSON video 1 is a number", "expected an object"]),
        ("video", [VIDEO, [1, 2]], 422, ["JSON video 1 is a list of 2 numbers"]),
        ("video", "features", 422, ["JSON body is a string"]),
        ("video", None, 422, ["JSON body is null"]),
        ("video", {**VIDEO, "text_tokens": [1.5]}, 422, ["'text_tokens' must be integers"]),
        ("video", {**VIDEO, "text_tokens": "1 2"}, 422, ["'text_tokens' is a string"]),
        ("frame", {"rgb": [0.5] * 1024, "audio": []}, 422, ["[1024]", "[frames, 1024]"]),
        ("frame", {"rgb": [[0.5] * 1024, [0.5] * 1000], "audio": []}, 422, ["frame 1 has 1000"]),
        ("frame", {"rgb": [[0.5] * 1024, 7], "audio": []}, 422, ["frame 1 is a number"]),
        ("frame", {"rgb": [[0.5] * 1024] * 2, "audio": [[0.5] * 128]}, 422, ["2 frames", "1"]),
        (
            "frame",
            {"rgb": [[300] * 1024], "audio": [[0] * 128], "quantized": True},
            422,
            ["0..255"],
        ),
        ("frame", {"rgb": [], "audio": [], "id": []}, 422, ["'id' is an empty list"]),
    ],
)
def test_bad_json_bodies_get_4xx_with_a_message(level, body, status, words):
    spec = video_spec(text=True) if level == "video" else frame_spec()
    with pytest.raises(RequestError) as e:
        parse_json(_body(body), spec)
    assert e.value.status == status, e.value.message
    assert all(w in e.value.message for w in words), (words, e.value.message)


def test_parsing_stops_at_the_deadline():
    body = json.dumps([VIDEO] * 200).encode()  # ~2000 tokens: the deadline is checked per 1024
    assert len(parse_json(body, video_spec())) == 200
    with pytest.raises(RequestError) as e:
        parse_json(body, video_spec(), deadline=time.monotonic() - 1)
    assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"


def test_a_large_body_takes_a_small_multiple_of_its_size():
    """~20 MiB of short numbers: json.loads made a Python float of each (~5.6x the body)."""
    rng = np.random.default_rng(3)
    video = json.dumps(
        {
            "rgb": rng.normal(0, 1, 1024).round(3).tolist(),
            "audio": rng.random(128).round(3).tolist(),
        }
    )
    n = (20 << 20) // len(video)
    body = ("[" + ",".join([video] * n) + "]").encode()
    spec = video_spec()
    tracemalloc.start()
    try:
        videos = parse_json(body, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(videos) == n and videos.rows["rgb"].shape == (n, 1024)
    assert peak < 2 * len(body), f"peak {peak / len(body):.2f}x the body"  # ~1.2x
