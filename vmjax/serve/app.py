"""The HTTP server: FastAPI routes over one loaded model, its vocabulary and the batcher.

The model is a classifier (each video's top classes) or an encoder run's video-side tower (each
video's embedding; no vocabulary, no top_k).

A POST /predict passes, in order: the token (auth.py, before any route), the Content-Type and
Content-Length checks, admission (limits.py: 503 when full), reading the body on the event loop
(408 past --body_timeout_s, 413 past --max_body_bytes), parsing it in a worker thread
(inputs.py, jsonbody.py), the batcher's queue and model call (batcher.py), and ranking the
scores in a worker thread; all after the body under --request_timeout_s (503).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import logging
import os
import threading
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from vmjax import export as export_lib
from vmjax.serve.auth import BearerToken
from vmjax.serve.batcher import Batcher, bucket_sizes
from vmjax.serve.errors import CLOSE, RETRY, RETRY_AFTER_S, RequestError
from vmjax.serve.inputs import InputSpec, Videos, parse_tfrecords
from vmjax.serve.jsonbody import parse_json
from vmjax.serve.limits import Admission, Limits

TFRECORD_TYPES = ("application/octet-stream", "application/x-tfrecord")
JSON_TYPES = ("application/json",)
BUNDLED_VOCABULARY = "vmjax/data/assets/yt8m_vocabulary.csv (YouTube-8M 2018)"
# Parsing and ranking hold the GIL most of the time: more threads would not parse faster,
# and a few keep one large body from making every small one wait.
PARSE_THREADS = 4

log = logging.getLogger("vmjax.serve")


def read_class_names(path: str, num_classes: int) -> list[str]:
    """Names by class index from a CSV with `Index` and `Name` columns (vocabulary.csv's layout);
    '' for classes it does not list."""
    names = [""] * num_classes
    with open(os.path.expanduser(path), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"Index", "Name"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"{path}: no column(s) {sorted(missing)}; expected a header with Index and Name "
                f"(got {reader.fieldnames})"
            )
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            try:
                index = int(row["Index"])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: Index {row['Index']!r} is not an integer") from None
            if not 0 <= index < num_classes:
                raise ValueError(
                    f"{where}: Index {index} is outside [0, {num_classes}) (the model's classes)"
                )
            names[index] = row["Name"] or ""
    return names


def default_class_names(num_classes: int) -> tuple[list[str], str]:
    """(names, where they come from): the bundled 2018 vocabulary for its 3862 classes, else ''."""
    if num_classes == 3862:
        from vmjax.data import synthetic

        return synthetic.load_class_names(), BUNDLED_VOCABULARY
    return [""] * num_classes, "none (no --vocabulary given and not the 3862-class YT8M 2018 set)"


class Service:
    """The loaded model, its input spec, class names, the batcher, and request counters.

    top_k and vocabulary apply to classifiers; an encoder file with a vocabulary is refused.
    """

    def __init__(
        self,
        model: str,
        *,
        vocabulary: str | None = None,
        top_k: int = 20,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        limits: Limits | None = None,
        warm_up: bool = True,
        wide_batches: bool = True,
    ):
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1")
        self.model_path = model
        # Batches of WIDE_ROWS or more read [out, in] copies of the Dense kernels (export.load).
        wide = wide_batches and max_batch >= export_lib.WIDE_ROWS
        self.predict = export_lib.load(model, wide_batches=wide)
        self.header = self.predict.header
        self.spec = InputSpec.from_header(self.header)
        c = self.spec.num_classes
        if c is None:  # an encoder: embeddings, no classes
            if vocabulary:
                raise ValueError(
                    f"--vocabulary {vocabulary}: {model} is an encoder tower (output "
                    f"{self.spec.output}): it returns embeddings, not classes; leave it out"
                )
            self.names, self.vocabulary, self.top_k = [], None, None
        else:
            if vocabulary:
                self.names, self.vocabulary = read_class_names(vocabulary, c), vocabulary
            else:
                self.names, self.vocabulary = default_class_names(c)
            self.top_k = min(top_k, c)
        self.limits = limits = limits or Limits()
        self.admission = Admission(limits)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        if self.spec.batch_size is not None and max_batch > self.spec.batch_size:
            log.warning(
                "%s was exported for batch size %d: max_batch %d -> %d",
                model,
                self.spec.batch_size,
                max_batch,
                self.spec.batch_size,
            )
            max_batch = self.spec.batch_size
        self.batcher = Batcher(
            self.predict,
            self.spec.zeros,
            max_batch=max_batch,
            max_wait_s=max_wait_ms / 1e3,
            sizes=bucket_sizes(max_batch, self.spec.batch_size),
        )
        if warm_up:
            self.batcher.warm_up()
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._started = time.time()

    def start(self) -> None:
        """Starts the batcher's worker and the parse threads (the app's lifespan calls it)."""
        self.pool = concurrent.futures.ThreadPoolExecutor(PARSE_THREADS, "vmjax-serve-parse")
        self.batcher.start()

    def close(self) -> None:
        self.batcher.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def count(self, **increments: int) -> None:
        with self._lock:
            self._counts.update(increments)

    def health(self) -> dict:
        s = self.spec
        if s.is_encoder:
            answer = {"embedding_dim": s.embedding_dim}
        else:
            answer = {"vocabulary": self.vocabulary, "top_k": self.top_k}
        return {
            "status": "ok",
            "model": self.header["model"],
            "model_file": os.path.abspath(self.model_path),
            "input_kind": s.level,
            "inputs": self.header["inputs"],
            "max_frames": s.max_frames if s.level == "frame" else None,
            "output": s.output,
            "num_classes": s.num_classes,
            **answer,
            "max_batch": self.batcher.max_batch,
            "max_wait_ms": self.batcher.max_wait_s * 1e3,
            "batch_sizes": self.batcher.sizes,
            "limits": dataclasses.asdict(self.limits),
        }

    def stats(self) -> dict:
        with self._lock:
            counts = dict(self._counts)
        errors = {
            k[len("status_") :]: v for k, v in sorted(counts.items()) if k.startswith("status_")
        }
        return {
            "uptime_s": time.time() - self._started,
            "requests": counts.get("requests", 0),
            "ok_requests": counts.get("ok", 0),
            "error_requests": errors,
            "videos": counts.get("videos", 0),
            "active_requests": self.admission.requests,
            "active_body_bytes": self.admission.bytes,
            **self.batcher.stats(),
        }

    def predictions(self, ids: list[str | None], scores: np.ndarray, k: int) -> list[dict]:
        """Per video its id (if any) and k best classes, best first (ties: the lower index)."""
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out = []
        for video_id, row, classes in zip(ids, scores, order, strict=True):
            top = [
                {"index": int(c), "name": self.names[c], "score": float(row[c])} for c in classes
            ]
            out.append({"top": top} if video_id is None else {"id": video_id, "top": top})
        return out

    @staticmethod
    def embeddings(ids: list[str | None], embeddings: np.ndarray) -> list[dict]:
        """Per video its id (if any) and its embedding."""
        return [
            {"embedding": e} if video_id is None else {"id": video_id, "embedding": e}
            for video_id, e in zip(ids, embeddings.tolist(), strict=True)
        ]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _content_length(request: Request) -> int | None:
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The body, read on the event loop; 413 past max_body_bytes, 408 past body_timeout_s."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    message = f"body is over the limit of {limits.max_body_bytes} bytes"
                    raise RequestError(413, f"{message} (--max_body_bytes)", CLOSE)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(
            408,
            f"the body did not arrive within {limits.body_timeout_s:g} s (--body_timeout_s); "
            f"{size} bytes came",
            CLOSE,
        ) from None
    except ClientDisconnect:
        # Nobody reads this answer; the status keeps /stats from counting it as a server error.
        raise RequestError(400, "the client went away before sending its whole body") from None
    return b"".join(chunks)


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """The FastAPI app; its lifespan starts the batcher's worker and stops it at shutdown.

    token: when set, every route but /healthz needs `Authorization: Bearer <token>`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="vmjax model server", lifespan=lifespan)
    if token is not None:
        app.add_middleware(BearerToken, token=token, on_reject=lambda: service.count(status_401=1))

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, e: RequestError) -> JSONResponse:
        service.count(**{f"status_{e.status}": 1})
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
        service.count(status_422=1)  # e.g. ?top_k=abc: the same body shape as every error
        where = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        return _error(422, where)

    @app.get("/healthz")
    async def healthz() -> dict:
        return service.health()

    @app.get("/stats")
    async def stats() -> dict:
        return service.stats()

    @app.post("/predict")
    async def predict(request: Request, top_k: int | None = None) -> JSONResponse:
        service.count(requests=1)
        try:
            return await _predict(request, top_k)
        except RequestError:
            raise
        except Exception as e:  # answered here: an app-level handler would also drop the connection
            service.count(status_500=1)
            log.exception("error while serving a request")
            return _error(500, f"internal error: {type(e).__name__}: {e}")

    async def _predict(request: Request, top_k: int | None) -> JSONResponse:
        encoder = service.spec.is_encoder
        if encoder and top_k is not None:
            raise RequestError(
                422,
                f"top_k={top_k}: this model is an encoder ({service.spec.output}) that returns "
                "embeddings, not classes; leave top_k out",
            )
        k = service.top_k if top_k is None else top_k  # None for an encoder
        if not encoder and not 1 <= k <= service.spec.num_classes:
            raise RequestError(
                422, f"top_k={k}; expected 1..{service.spec.num_classes} (the model's classes)"
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in TFRECORD_TYPES:
            parse = parse_tfrecords
        elif content_type in JSON_TYPES:
            parse = parse_json
        else:
            raise RequestError(
                415,
                f"Content-Type {content_type or '(none)'!r} is not supported; send TFRecord bytes "
                f"as {' or '.join(TFRECORD_TYPES)}, or JSON features as application/json",
            )
        limits = service.limits
        length = _content_length(request)
        if length is not None and length > limits.max_body_bytes:
            raise RequestError(
                413,
                f"body of {length} bytes is over the limit of {limits.max_body_bytes} bytes",
                CLOSE,
            )
        # A chunked body's size is unknown until read: it may take the largest allowed.
        reserved = limits.max_body_bytes if length is None else length
        if not service.admission.enter(reserved):
            a = service.admission
            raise RequestError(
                503,
                f"busy: {a.requests} requests with {a.bytes} bytes of body are being served "
                f"(--max_concurrent {limits.max_concurrent}, --max_inflight_bytes "
                f"{limits.max_inflight_bytes}); retry after {RETRY_AFTER_S} s",
                {**RETRY, **CLOSE},
            )
        try:
            body = await _read_body(request, limits)
            if not body:
                raise RequestError(400, "empty body: expected TFRecord bytes or JSON features")
            loop = asyncio.get_running_loop()
            deadline = time.monotonic() + limits.request_timeout_s  # for the parse thread
            try:
                async with asyncio.timeout(limits.request_timeout_s):
                    # A worker thread, not the event loop: other requests go on meanwhile.
                    videos = await loop.run_in_executor(
                        service.pool, parse, body, service.spec, deadline
                    )
                    del body  # the rows hold what the request needs while it waits
                    return await _score(videos, k)
            except TimeoutError:
                raise RequestError(
                    503,
                    f"the request took longer than {limits.request_timeout_s:g} s "
                    f"(--request_timeout_s); retry after {RETRY_AFTER_S} s",
                    RETRY,
                ) from None
        finally:
            service.admission.leave(reserved)

    async def _score(videos: Videos, k: int | None) -> JSONResponse:
        """The model's answer: each video's top k classes, or an encoder's embeddings."""
        # On a timeout, gather's cancellation reaches the batcher's futures: chunks not yet
        # taken into a batch are dropped.
        parts = await asyncio.gather(
            *(asyncio.wrap_future(f) for f in service.batcher.submit(videos.rows))
        )
        scores = np.concatenate(parts)
        encoder = service.spec.is_encoder
        if not np.isfinite(scores).all():
            bad = int(np.argmax(~np.isfinite(scores).all(axis=1)))
            service.count(status_500=1)
            what = "embeddings" if encoder else "scores"
            return _error(500, f"the model returned non-finite {what} for video {bad}")
        # Off the event loop: sorting a big request's scores would stall every other request.
        loop = asyncio.get_running_loop()
        if encoder:
            answer = await loop.run_in_executor(
                service.pool, service.embeddings, videos.ids, scores
            )
        else:
            answer = await loop.run_in_executor(
                service.pool, service.predictions, videos.ids, scores, k
            )
        service.count(ok=1, videos=len(videos))
        return JSONResponse({"embeddings" if encoder else "predictions": answer})

    return app
