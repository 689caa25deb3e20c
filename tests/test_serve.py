"""The model server over a real socket: its answers equal the exported model's, bad requests get
4xx and the server goes on, and concurrent requests share device batches."""

import concurrent.futures
import csv
import dataclasses
import importlib.resources
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import jax
import numpy as np
import pytest
import uvicorn
from tensorflow_datasets.proto import tf_example_pb2

from tests.train.test_loop import get_config, override
from vmjax import export as export_lib
from vmjax.data import tfrecord, yt8m
from vmjax.serve import Batcher, Limits, Service, bucket_sizes, create_app, main, uvicorn_config
from vmjax.serve import app as serve_app
from vmjax.serve.auth import TOKEN_ENV
from vmjax.serve.jsonbody import parse_json
from vmjax.train import setup
from vmjax.train.checkpoint import Checkpointer

FRAME_CLASSES = 20
MAX_FRAMES = 8
TOP_K = 5


def make_model(tmp, arg: str, **overrides) -> str:
    """A run of random (not zero) parameters, checkpointed without training and exported."""
    config = override(get_config(arg), overrides)
    workdir = os.path.join(tmp, config.model.name)
    _, _, state = setup.init_run(config)
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [
        0.02 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    state = state.replace(params=jax.tree.unflatten(treedef, leaves))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 1)
    ckpt.save(0, state)
    ckpt.wait()
    ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"config": json.loads(config.to_json_best_effort())}, f)
    out = os.path.join(tmp, f"{config.model.name}.bin")
    export_lib.export(workdir, out, platforms=("cpu",), log=lambda _: None)
    return out


class Running:
    """A uvicorn server of `service` in a background thread, on a free localhost port."""

    def __init__(self, service: Service, token: str | None = None):
        self.service = service
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(service, token)
        config = uvicorn_config(app, service.limits, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive()
        assert self.service.batcher._thread is None  # the lifespan stopped the batcher

    def predict(self, body, content_type: str, **params) -> httpx.Response:
        return self.client.post(
            "/predict", content=body, headers={"Content-Type": content_type}, params=params
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("serve"))
    video = make_model(tmp, "smoke", **{"model.name": "logistic"})
    frame = make_model(
        tmp,
        "frame,smoke",
        **{
            "model.name": "frame_logistic",
            "data.num_classes": FRAME_CLASSES,
            "data.max_frames": MAX_FRAMES,
        },
    )
    vocabulary = os.path.join(tmp, "vocabulary.csv")
    with open(vocabulary, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Index", "TrainVideoCount", "Name"])
        w.writerows([c, 1, f"class {c}"] for c in range(FRAME_CLASSES))
    return {"video": video, "frame": frame, "vocabulary": vocabulary}


@pytest.fixture(scope="module")
def video_server(models):
    running = Running(
        Service(
            models["video"],
            top_k=TOP_K,
            max_batch=8,
            max_wait_ms=1,
            limits=Limits(max_body_bytes=200_000),
        )
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def frame_server(models):
    running = Running(
        Service(models["frame"], vocabulary=models["vocabulary"], top_k=TOP_K, max_batch=8)
    )
    yield running
    running.stop()


def test_batches_of_four_or_more_read_the_transposed_kernels_unless_turned_off(
    models, video_server
):
    assert video_server.service.predict.wide_rows == export_lib.WIDE_ROWS  # max_batch=8
    for kw in ({"max_batch": 2}, {"max_batch": 8, "wide_batches": False}):
        assert Service(models["video"], warm_up=False, **kw).predict.wide_rows is None, kw


def _bundled_names() -> dict[int, str]:
    path = importlib.resources.files("vmjax.data") / "assets" / "yt8m_vocabulary.csv"
    with path.open(newline="") as f:
        return {int(r["Index"]): r["Name"] for r in csv.DictReader(f)}


def _check_top(predictions, scores, names, ids=None):
    """Each prediction is the reference's top TOP_K: right classes, order, scores and names."""
    assert len(predictions) == len(scores)
    for i, (p, want) in enumerate(zip(predictions, scores, strict=True)):
        assert p.get("id") == (None if ids is None else ids[i])
        got = np.array([c["index"] for c in p["top"]])
        got_scores = np.array([c["score"] for c in p["top"]])
        assert len(got) == TOP_K
        np.testing.assert_allclose(got_scores, want[got], rtol=1e-5, atol=1e-7)
        assert (np.diff(want[got]) <= 1e-6).all()  # best first
        rest = np.delete(want, got)
        assert want[got].min() >= rest.max() - 1e-6  # nothing better left out
        assert [c["name"] for c in p["top"]] == [names[c] for c in got]
    if ids is None:
        return
    # Far from ties, the exact classes too (scores of random models are rarely that close).
    for p, want in zip(predictions, scores, strict=True):
        order = np.argsort(-want, kind="stable")[:TOP_K]
        if np.min(np.abs(np.diff(np.sort(want)[::-1][: TOP_K + 1]))) > 1e-5:
            assert [c["index"] for c in p["top"]] == order.tolist()


def _video_records(rng, n):
    rgb = rng.normal(0, 1, (n, yt8m.RGB_DIM)).astype(np.float32)
    audio = rng.normal(0, 1, (n, yt8m.AUDIO_DIM)).astype(np.float32)
    ids = [f"vid{i}" for i in range(n)]
    records = [yt8m.encode_video_example(ids[i], [1, 2], rgb[i], audio[i]) for i in range(n)]
    return records, {"rgb": rgb, "audio": audio}, ids


def _tfrecord_bytes(tmp_path, records) -> bytes:
    path = str(tmp_path / "body.tfrecord")
    tfrecord.write_records(path, records)
    with open(path, "rb") as f:
        return f.read()


def test_healthz_describes_the_model(video_server, frame_server, models):
    h = video_server.client.get("/healthz").json()
    assert h["status"] == "ok" and h["model"] == "logistic"
    assert h["input_kind"] == "video" and h["num_classes"] == 3862 and h["max_frames"] is None
    assert h["batch_sizes"] == [1, 2, 4, 8] and h["top_k"] == TOP_K
    assert "yt8m_vocabulary.csv" in h["vocabulary"]
    h = frame_server.client.get("/healthz").json()
    assert h["input_kind"] == "frame" and h["num_classes"] == FRAME_CLASSES
    assert h["max_frames"] == MAX_FRAMES and h["vocabulary"] == models["vocabulary"]


def test_video_level_records_and_json_match_the_exported_model(video_server, models, tmp_path):
    rng = np.random.default_rng(0)
    records, features, ids = _video_records(rng, 5)
    want = export_lib.load(models["video"])(features)
    names = _bundled_names()
    r = video_server.predict(_tfrecord_bytes(tmp_path, records), "application/x-tfrecord")
    assert r.status_code == 200, r.text
    _check_top(r.json()["predictions"], want, names, ids)
    r = video_server.predict(
        _tfrecord_bytes(tmp_path, records[:2]), "application/octet-stream", top_k=2
    )
    assert [len(p["top"]) for p in r.json()["predictions"]] == [2, 2]

    videos = [
        {"rgb": features["rgb"][i].tolist(), "audio": features["audio"][i].tolist()}
        for i in range(5)
    ]
    videos[1]["id"] = "named"
    r = video_server.predict(json.dumps(videos), "application/json")
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert predictions[1]["id"] == "named" and "id" not in predictions[0]
    predictions[1].pop("id")
    _check_top(predictions, want, names)
    r = video_server.predict(json.dumps(videos[3]), "application/json; charset=utf-8")
    _check_top(r.json()["predictions"], want[3:4], names)


def _reference_frames(videos: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The model's inputs written out: the first MAX_FRAMES frames, zero-padded, and a mask."""
    n = len(videos)
    batch = {
        "rgb": np.zeros((n, MAX_FRAMES, yt8m.RGB_DIM), np.uint8),
        "audio": np.zeros((n, MAX_FRAMES, yt8m.AUDIO_DIM), np.uint8),
        "mask": np.zeros((n, MAX_FRAMES), bool),
    }
    for i, (rgb, audio) in enumerate(videos):
        t = min(len(rgb), MAX_FRAMES)
        batch["rgb"][i, :t], batch["audio"][i, :t] = rgb[:t], audio[:t]
        batch["mask"][i, :t] = True
    return batch


def _quantize(x):
    """The extractor's quantization, written from docs/yt8m_format.md."""
    return (
        np.array([round((min(max(v, -2.0), 2.0) + 2) * 255 / 4) for v in x.reshape(-1)])
        .astype(np.uint8)
        .reshape(x.shape)
    )


def test_frame_level_records_and_json_match_the_exported_model(frame_server, models, tmp_path):
    rng = np.random.default_rng(1)
    lengths = [3, MAX_FRAMES, 11, 1, 0]  # 11 > MAX_FRAMES: the first frames count
    videos = [
        (
            rng.integers(0, 256, (t, yt8m.RGB_DIM), dtype=np.uint8),
            rng.integers(0, 256, (t, yt8m.AUDIO_DIM), dtype=np.uint8),
        )
        for t in lengths
    ]
    floats = rng.normal(0, 1.2, (2, yt8m.RGB_DIM)), rng.normal(0, 1.2, (2, yt8m.AUDIO_DIM))
    records = [
        yt8m.encode_frame_example(f"f{i}", [0], rgb, audio) for i, (rgb, audio) in enumerate(videos)
    ]
    # Some extractors write float frames: the server quantizes them for this uint8 model.
    records.append(yt8m.encode_frame_example("floats", [], *floats, float_features=True))
    want = export_lib.load(models["frame"])(
        _reference_frames([*videos, (_quantize(floats[0]), _quantize(floats[1]))])
    )
    names = [f"class {c}" for c in range(FRAME_CLASSES)]
    r = frame_server.predict(_tfrecord_bytes(tmp_path, records), "application/x-tfrecord")
    assert r.status_code == 200, r.text
    _check_top(r.json()["predictions"], want, names, ["f0", "f1", "f2", "f3", "f4", "floats"])

    body = [
        {
            "id": "q",
            "quantized": True,
            "rgb": videos[2][0].tolist(),
            "audio": videos[2][1].tolist(),
        },
        {"rgb": floats[0].tolist(), "audio": floats[1].tolist()},
    ]
    r = frame_server.predict(json.dumps(body), "application/json")
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert predictions[0].pop("id") == "q"
    _check_top(predictions, want[[2, 5]], names)

    # The wrong record kind is named, as is what the model takes.
    video_record = yt8m.encode_video_example("v", [], np.zeros(1024), np.zeros(128))
    r = frame_server.predict(_tfrecord_bytes(tmp_path, [video_record]), "application/x-tfrecord")
    assert r.status_code == 422 and "frame-level" in r.json()["error"]


def _bad_dims_record() -> bytes:
    example = tf_example_pb2.Example()
    f = example.features.feature
    f["id"].bytes_list.value.append(b"short")
    f["mean_rgb"].float_list.value.extend([0.5] * 1000)
    f["mean_audio"].float_list.value.extend([0.5] * 128)
    return example.SerializeToString()


def test_bad_requests_get_4xx_and_the_server_goes_on(video_server, tmp_path):
    rng = np.random.default_rng(2)
    records, features, _ = _video_records(rng, 3)
    good = _tfrecord_bytes(tmp_path, records)
    second = len(good) // 3  # every record is the same size
    corrupt = bytearray(good)
    corrupt[second + 20] ^= 0xFF  # a payload byte of record 1
    nan = yt8m.encode_video_example(
        "nan", [], np.where(np.arange(1024) == 7, np.nan, 0), np.zeros(128)
    )
    video = {"rgb": features["rgb"][0].tolist(), "audio": features["audio"][0].tolist()}
    frame_record = yt8m.encode_frame_example(
        "f", [], np.zeros((2, 1024), np.uint8), np.zeros((2, 128), np.uint8)
    )
    tf, js = "application/x-tfrecord", "application/json"
    cases = [
        # (body, content type, status, words the message must hold)
        ({**video, "rgb": video["rgb"][:1000]}, js, 422, ["'rgb'", "[1000]", "1024"]),
        ([video, {**video, "audio": [0.0] * 127}], js, 422, ["video 1", "'audio'", "128"]),
        (
            _tfrecord_bytes(tmp_path, [records[0], _bad_dims_record()]),
            tf,
            422,
            ["record 1", "'mean_rgb'", "1000 floats, expected 1024"],
        ),
        (good[:-10], tf, 400, ["record 2", "truncated"]),
        (bytes(corrupt), tf, 400, ["record 1", "data_crc"]),
        (good[:5], tf, 400, ["record 0", "truncated header"]),
        ({**video, "rgb": [*video["rgb"][:-1], float("nan")]}, js, 422, ["non-finite", "'rgb'"]),
        ({**video, "audio": [1e400] + video["audio"][1:]}, js, 422, ["non-finite", "'audio'"]),
        (_tfrecord_bytes(tmp_path, [nan]), tf, 422, ["record 0", "'mean_rgb'", "non-finite"]),
        (b"", tf, 400, ["empty body"]),
        (b"", js, 400, ["empty body"]),
        (b"x" * 200_001, tf, 413, ["200001 bytes", "200000"]),
        (b"x" * 10, "text/csv", 415, ["text/csv", "application/x-tfrecord"]),
        (b'{"rgb": [1, 2', js, 400, ["malformed JSON"]),
        ([], js, 400, ["empty list"]),
        ([video, 3], js, 422, ["JSON video 1", "expected an object"]),
        ({**video, "rbg": []}, js, 422, ["unknown key", "rbg"]),
        (_tfrecord_bytes(tmp_path, [frame_record]), tf, 422, ["video-level", "mean_rgb"]),
    ]
    before = video_server.client.get("/stats").json()
    for body, content_type, status, words in cases:
        if not isinstance(body, bytes):
            body = json.dumps(body)
        r = video_server.predict(body, content_type)
        assert r.status_code == status, (words, r.text)
        message = r.json()["error"]
        assert all(w in message for w in words), (words, message)
        r = video_server.predict(good, tf)  # the server still serves
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3

    r = video_server.client.post("/predict", content=b"abc")  # no Content-Type at all
    assert r.status_code == 415
    # Chunked bodies (no Content-Length) are cut off at the limit too.
    r = video_server.client.post(
        "/predict", content=iter([b"y" * 120_000] * 2), headers={"Content-Type": tf}
    )
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    assert video_server.predict(good, tf, top_k=0).status_code == 422
    after = video_server.client.get("/stats").json()
    errors = {k: v - before["error_requests"].get(k, 0) for k, v in after["error_requests"].items()}
    assert errors == {"400": 7, "413": 2, "415": 2, "422": 10}
    assert after["ok_requests"] - before["ok_requests"] == len(cases)


def test_a_failing_model_call_is_a_500_and_the_server_goes_on(video_server, tmp_path):
    records, _, _ = _video_records(np.random.default_rng(4), 2)
    body = _tfrecord_bytes(tmp_path, records)
    batcher = video_server.service.batcher
    predict = batcher.predict

    def broken(batch):
        raise RuntimeError("device lost")

    batcher.predict = broken
    try:
        r = video_server.predict(body, "application/x-tfrecord")
    finally:
        batcher.predict = predict
    assert r.status_code == 500 and "RuntimeError: device lost" in r.json()["error"]
    assert video_server.predict(body, "application/x-tfrecord").status_code == 200


def test_concurrent_requests_share_device_batches(models):
    running = Running(Service(models["video"], top_k=TOP_K, max_batch=64, max_wait_ms=300))
    try:
        rng = np.random.default_rng(3)
        n = 12
        _, features, _ = _video_records(rng, n)
        want = export_lib.load(models["video"])(features)
        start = threading.Barrier(n)

        def ask(i):
            body = {
                "id": str(i),
                "rgb": features["rgb"][i].tolist(),
                "audio": features["audio"][i].tolist(),
            }
            start.wait()
            return running.predict(json.dumps(body), "application/json")

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(ask, range(n)))
        for i, r in enumerate(responses):
            assert r.status_code == 200, r.text
            _check_top(r.json()["predictions"], want[i : i + 1], _bundled_names(), [str(i)])
        stats = running.client.get("/stats").json()
        assert stats["requests"] == stats["videos"] == stats["batched_videos"] == n
        assert stats["device_batches"] < n and stats["mean_batch_size"] > 1
        assert sum(int(k) * v for k, v in stats["batch_size_histogram"].items()) == n
    finally:
        running.stop()


TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class HealthWatch:
    """Asks /healthz from a thread, each time on a new connection: every status and duration."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[int | str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                status: int | str = httpx.get(f"{self.url}/healthz", timeout=2).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            self.answers.append((status, time.monotonic() - start))
            self._stop.wait(0.05)

    def stop(self) -> list[tuple[int | str, float]]:
        self._stop.set()
        self._thread.join()
        return self.answers


def _connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def _until_closed(sock: socket.socket) -> tuple[int, bytes]:
    """(status, response) of what the server sends until it closes; status 0 for nothing."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    response = b"".join(chunks)
    return (int(response.split(b" ", 2)[1]) if response else 0), response


def _head(length: int | None, token: str = TOKEN, content_type="application/json") -> bytes:
    size = "" if length is None else f"Content-Length: {length}\r\n"
    return (
        f"POST /predict HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {content_type}\r\n{size}\r\n"
    ).encode()


def test_hostile_traffic_gets_4xx_and_healthz_stays_up(models, monkeypatch):
    """Every malformed kind at once: no 500, the expected 4xx/503, /healthz within 1 s."""
    limits = Limits(
        max_body_bytes=4 << 20,
        max_concurrent=2,
        max_inflight_bytes=16 << 20,
        request_timeout_s=20,
        body_timeout_s=0.6,
        header_timeout_s=0.6,
    )
    service = Service(models["video"], top_k=TOP_K, max_batch=8, max_wait_ms=1, limits=limits)
    running = Running(service, token=TOKEN)
    client = running.client
    watch = HealthWatch(running.url)
    statuses: list[int] = []

    def post(body, content_type="application/json", headers=AUTH, **kwargs) -> httpx.Response:
        if not isinstance(body, bytes | Iterator):
            body = json.dumps(body).encode()
        r = client.post(
            "/predict", content=body, headers={"Content-Type": content_type, **headers}, **kwargs
        )
        statuses.append(r.status_code)
        return r

    try:
        rng = np.random.default_rng(5)
        video = {
            "rgb": rng.normal(0, 1, 1024).round(3).tolist(),
            "audio": rng.normal(0, 1, 128).round(3).tolist(),
        }
        large = json.dumps([video] * 400).encode()  # ~3 MiB, under the 4 MiB limit
        assert 2 << 20 < len(large) < limits.max_body_bytes
        cases = [
            # (body, content type, headers, status, words the message must hold)
            (video, "application/json", {}, 401, ["missing token"]),
            (video, "application/json", {"Authorization": "Bearer guess"}, 401, ["wrong token"]),
            (video, "application/json", {"Authorization": TOKEN}, 401, ["wrong token"]),
            (b'{"rgb": [1, 2', "application/json", AUTH, 400, ["malformed JSON"]),
            (b"[" * 200_000, "application/json", AUTH, 400, ["deeper than"]),
            (b'{"a": ' * 100_000, "application/json", AUTH, 400, ["deeper than"]),
            (b"\xff\xfe\x00", "application/json", AUTH, 400, ["malformed JSON"]),
            ({**video, "id": "\ud800"}, "application/json", AUTH, 400, ["surrogate"]),
            ({**video, "rgb": [1.0] * 1000}, "application/json", AUTH, 422, ["[1000]"]),
            ({**video, "rgb": [video["rgb"]] * 2}, "application/json", AUTH, 422, ["of lists"]),
            ({**video, "rgb": ["1"] * 1024}, "application/json", AUTH, 422, ["of strings"]),
            ({**video, "audio": None}, "application/json", AUTH, 422, ["'audio' is null"]),
            ({**video, "id": 3}, "application/json", AUTH, 422, ["'id' is a number"]),
            ({**video, "id": "x" * 10_000}, "application/json", AUTH, 422, ["4096"]),
            ({**video, "quantized": 1}, "application/json", AUTH, 422, ["true or false"]),
            ([video, "x"], "application/json", AUTH, 422, ["JSON video 1 is a string"]),
            (3.5, "application/json", AUTH, 422, ["JSON body is a number"]),
            (b"not a record", "application/x-tfrecord", AUTH, 400, ["TFRecord body"]),
            (video, "text/plain", AUTH, 415, ["text/plain"]),
            (b"x" * (limits.max_body_bytes + 1), "application/json", AUTH, 413, ["over the limit"]),
            (iter([b"[" * (1 << 20)] * 5), "application/json", AUTH, 413, ["over the limit"]),
        ]
        for body, content_type, headers, status, words in cases:
            r = post(body, content_type, headers)
            assert r.status_code == status, (words, r.text[:300])
            assert all(w in r.json()["error"] for w in words), (words, r.json()["error"])
            if status == 401:
                assert r.headers["WWW-Authenticate"] == "Bearer"
        r = post(video, params={"top_k": "many"})
        assert r.status_code == 422 and "top_k" in r.json()["error"]
        assert client.get("/stats").status_code == 401  # every route but /healthz
        assert client.get("/nowhere", headers=AUTH).status_code == 404
        r = post(large)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 400
        # Parsing runs in a worker thread: a parse that takes 1.5 s holds up no /healthz.
        with monkeypatch.context() as m:
            m.setattr(serve_app, "parse_json", lambda *a: time.sleep(1.5) or parse_json(*a))
            assert post(video).status_code == 200

        # Slow clients. Headers a byte at a time: cut off at header_timeout_s with 408.
        sock, start = _connect(running.port), time.monotonic()
        try:
            for byte in _head(10):
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], 0.05)[0]:
                    break
        except OSError:  # the server closed first
            pass
        status, response = _until_closed(sock)
        assert status == 408 and b"header_timeout_s" in response, response
        assert time.monotonic() - start < 3
        # Headers growing past h11's limit (MAX_HEADER_BYTES) unfinished: 400 from uvicorn.
        sock = _connect(running.port, _head(10)[:-2] + b"X-Big: " + b"a" * 40_000)
        assert _until_closed(sock)[0] == 400
        # A connection that sends nothing is closed too, without an answer.
        sock, start = _connect(running.port), time.monotonic()
        assert _until_closed(sock) == (0, b"") and time.monotonic() - start < 3
        # Two bodies that trickle take both admission slots: the next request gets 503 with
        # Retry-After at once; the slow ones get 408 at body_timeout_s.
        slow = [_connect(running.port, _head(1000) + b"[0.5, ") for _ in range(2)]
        deadline = time.monotonic() + 5
        while client.get("/stats", headers=AUTH).json()["active_requests"] < 2:
            assert time.monotonic() < deadline, "the slow requests were not admitted"
            time.sleep(0.02)
        r = post(video)
        assert r.status_code == 503 and "busy" in r.json()["error"], r.text
        assert r.headers["Retry-After"] == "1"
        for sock in slow:
            status, response = _until_closed(sock)
            assert status == 408 and b"body_timeout_s" in response, response
        # A request the model does not answer in request_timeout_s: 503 with Retry-After.
        batcher = service.batcher
        predict = batcher.predict

        def stuck(batch):
            time.sleep(1.0)
            return predict(batch)

        batcher.predict = stuck
        service.limits = dataclasses.replace(limits, request_timeout_s=0.3)
        try:
            r = post(video)
        finally:
            batcher.predict, service.limits = predict, limits
        assert r.status_code == 503 and "--request_timeout_s" in r.json()["error"], r.text
        assert r.headers["Retry-After"] == "1"
        r = post(video)  # the server goes on
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    finally:
        answers = watch.stop()
        stats = client.get("/stats", headers=AUTH).json()
        running.stop()
    assert 503 in statuses and all(s < 500 or s == 503 for s in statuses), statuses
    assert "500" not in stats["error_requests"] and stats["active_requests"] == 0
    assert len(answers) > 10
    slow_or_failed = [(status, t) for status, t in answers if status != 200 or t > 1.0]
    assert not slow_or_failed, slow_or_failed


def test_batcher_sizes_splits_and_no_batching():
    calls = []

    def predict(batch):
        calls.append(len(batch["x"]))
        return batch["x"] * 2.0

    def zeros(n):
        return {"x": np.full((n, 1), -1.0)}

    def run(max_batch, max_wait_s, requests):
        calls.clear()
        b = Batcher(predict, zeros, max_batch, max_wait_s, bucket_sizes(max_batch))
        futures = [
            b.submit({"x": np.arange(s, dtype=float)[:, None] + 100 * i})
            for i, s in enumerate(requests)
        ]
        b.start()  # everything is queued before the worker starts: batching is deterministic
        got = [np.concatenate([f.result(timeout=10) for f in fs]) for fs in futures]
        b.close()
        for i, (s, g) in enumerate(zip(requests, got, strict=True)):
            np.testing.assert_array_equal(g[:, 0], 2 * (np.arange(s) + 100 * i))
        return list(calls), b.stats()

    assert bucket_sizes(6) == [1, 2, 4, 6] and bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(1) == [1] and bucket_sizes(64, fixed=16) == [16]
    calls_, stats = run(6, 0.05, [1, 2, 1, 9])  # 9 > max_batch: split 6 + 3
    # 1+2+1 share a call; then 6; then 3, padded to 4.
    assert calls_ == [4, 6, 4] and stats["device_batches"] == 3
    assert stats["batch_size_histogram"] == {"3": 1, "4": 1, "6": 1} and stats["padded_rows"] == 1
    calls_, stats = run(1, 0.05, [1, 2, 1])  # max_batch 1: one video per call
    assert calls_ == [1, 1, 1, 1] and stats["mean_batch_size"] == 1
    calls_, stats = run(8, 0.0, [1, 2, 1])  # no waiting: each request on its own
    assert calls_ == [1, 2, 1]


def test_command_line(models, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--max_wait_ms", "--token", "--max_concurrent", "--request_timeout_s"):
        assert flag in out
    assert TOKEN_ENV in out and "python -m vmjax.serve --model" in out
    model = ["--model", models["video"]]
    cases = [
        # (arguments, words the error must hold)
        (
            ["--model", models["vocabulary"], "--port", "0"],
            ["is not a file written by vmjax.export"],
        ),
        (["--model", "/nonexistent/model.npz"], ["--model", "no such file"]),
        ([], ["--model"]),
        ([*model, "--log_level", "bogus"], ["--log_level", "'bogus'", "warning"]),
        ([*model, "--port", "99999"], ["--port", "99999", "0..65535"]),
        ([*model, "--port", "-1"], ["--port", "0..65535"]),
        ([*model, "--port", "http"], ["--port", "not an integer"]),
        ([*model, "--max_batch", "0"], ["--max_batch", ">= 1"]),
        ([*model, "--max_batch", "-3"], ["--max_batch", ">= 1"]),
        ([*model, "--top_k", "0"], ["--top_k"]),
        ([*model, "--max_wait_ms", "-1"], ["--max_wait_ms", ">= 0"]),
        ([*model, "--request_timeout_s", "0"], ["--request_timeout_s", "> 0"]),
        ([*model, "--vocabulary", "/nonexistent.csv"], ["--vocabulary", "no such file"]),
        ([*model, "--max_body_bytes", "2000", "--max_inflight_bytes", "1000"], ["could never"]),
        ([*model, "--token", " "], ["--token is empty"]),
        (
            [*model, "--host", "0.0.0.0"],
            ["refusing to listen on 0.0.0.0", "--token", TOKEN_ENV],
        ),
    ]
    for argv, words in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, (argv, err)
        assert all(w in err for w in words), (argv, words, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    # The refusal is one line; with the token in the environment the address is allowed (and
    # this file, no model, fails next).
    main_line = "python -m vmjax.serve: error: refusing"
    with pytest.raises(SystemExit):
        main([*model, "--host", "0.0.0.0"])
    assert capsys.readouterr().err.startswith(main_line)
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    with pytest.raises(SystemExit) as e:
        main(["--model", models["vocabulary"], "--host", "0.0.0.0", "--port", "0"])
    assert e.value.code == 2 and "not a file written by vmjax.export" in capsys.readouterr().err
