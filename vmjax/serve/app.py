"""The HTTP server: FastAPI routes over one loaded model, its vocabulary and the batcher."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from vmjax import export as export_lib
from vmjax.serve.batcher import Batcher, bucket_sizes
from vmjax.serve.inputs import InputSpec, RequestError, parse_json, parse_tfrecords

TFRECORD_TYPES = ("application/octet-stream", "application/x-tfrecord")
JSON_TYPES = ("application/json",)
BUNDLED_VOCABULARY = "vmjax/data/assets/yt8m_vocabulary.csv (YouTube-8M 2018)"

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
    """The loaded model, its input spec, class names, the batcher, and request counters."""

    def __init__(
        self,
        model: str,
        *,
        vocabulary: str | None = None,
        top_k: int = 20,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_body_bytes: int = 64 << 20,
        warm_up: bool = True,
    ):
        if top_k < 1 or max_body_bytes < 1:
            raise ValueError(f"top_k={top_k} and max_body_bytes={max_body_bytes} must be >= 1")
        self.model_path = model
        self.predict = export_lib.load(model)
        self.header = self.predict.header
        self.spec = InputSpec.from_header(self.header)
        c = self.spec.num_classes
        if vocabulary:
            self.names, self.vocabulary = read_class_names(vocabulary, c), vocabulary
        else:
            self.names, self.vocabulary = default_class_names(c)
        self.top_k = min(top_k, c)
        self.max_body_bytes = max_body_bytes
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

    def count(self, **increments: int) -> None:
        with self._lock:
            self._counts.update(increments)

    def health(self) -> dict:
        s = self.spec
        return {
            "status": "ok",
            "model": self.header["model"],
            "model_file": os.path.abspath(self.model_path),
            "input_kind": s.level,
            "inputs": self.header["inputs"],
            "max_frames": s.max_frames if s.level == "frame" else None,
            "num_classes": s.num_classes,
            "vocabulary": self.vocabulary,
            "top_k": self.top_k,
            "max_batch": self.batcher.max_batch,
            "max_wait_ms": self.batcher.max_wait_s * 1e3,
            "batch_sizes": self.batcher.sizes,
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(413, f"body of {int(length)} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes (--max_body_bytes)")
    return bytes(body)


def create_app(service: Service) -> FastAPI:
    """The FastAPI app; its lifespan starts the batcher's worker and stops it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.batcher.start()
        try:
            yield
        finally:
            service.batcher.close()

    app = FastAPI(title="vmjax model server", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, e: RequestError) -> JSONResponse:
        service.count(**{f"status_{e.status}": 1})
        return _error(e.status, e.message)

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
        k = service.top_k if top_k is None else top_k
        if not 1 <= k <= service.spec.num_classes:
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
        body = await _read_body(request, service.max_body_bytes)
        if not body:
            raise RequestError(400, "empty body: expected TFRecord bytes or JSON features")
        videos = await run_in_threadpool(parse, body, service.spec)
        futures = service.batcher.submit(videos.rows)
        parts = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        scores = np.concatenate(parts)
        if not np.isfinite(scores).all():
            bad = int(np.argmax(~np.isfinite(scores).all(axis=1)))
            service.count(status_500=1)
            return _error(500, f"the model returned non-finite scores for video {bad}")
        # Off the event loop: sorting a big request's scores would stall every other request.
        predictions = await run_in_threadpool(service.predictions, videos.ids, scores, k)
        service.count(ok=1, videos=len(videos))
        return JSONResponse({"predictions": predictions})

    return app


EXAMPLE = """example:
  python -m vmjax.main --config configs/yt8m.py:smoke --workdir /tmp/run
  python -m vmjax.export --workdir /tmp/run --out /tmp/model.bin
  python -m vmjax.serve --model /tmp/model.bin --port 8000
  curl -s --data-binary @validate00.tfrecord -H 'Content-Type: application/x-tfrecord' \\
      'localhost:8000/predict?top_k=5'
  curl -s localhost:8000/healthz; curl -s localhost:8000/stats

See docs/serving.md for the request and response formats and the error table."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.serve",
        description="Serve an exported vmjax model (vmjax.export's model.bin) over HTTP: "
        "POST /predict with YT8M TFRecords or JSON features returns each video's top classes; "
        "concurrent requests are batched dynamically.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="the exported model file (model.bin)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (%(default)s)")
    parser.add_argument(
        "--vocabulary",
        default=None,
        help="CSV with Index and Name columns for class names (default: the bundled YouTube-8M "
        "2018 vocabulary for a 3862-class model, else no names)",
    )
    parser.add_argument(
        "--top_k", type=int, default=20, help="classes returned per video (%(default)s)"
    )
    parser.add_argument(
        "--max_batch",
        type=int,
        default=64,
        help="most videos in one model call; 1 turns batching off (%(default)s)",
    )
    parser.add_argument(
        "--max_wait_ms",
        type=float,
        default=5.0,
        help="how long the first queued video waits for others to batch with; 0 runs each "
        "request on its own (%(default)s)",
    )
    parser.add_argument(
        "--max_body_bytes",
        type=int,
        default=64 << 20,
        help="larger request bodies get 413 (%(default)s)",
    )
    parser.add_argument("--log_level", default="info", help="uvicorn log level (%(default)s)")
    parser.add_argument("--access_log", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        service = Service(
            args.model,
            vocabulary=args.vocabulary,
            top_k=args.top_k,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_body_bytes=args.max_body_bytes,
        )
    except (ValueError, OSError) as e:  # ExportError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    h = service.health()
    log.info(
        "Serving %s (%s, %s-level, %d classes; batch sizes %s) on http://%s:%d",
        args.model,
        h["model"],
        h["input_kind"],
        h["num_classes"],
        h["batch_sizes"],
        args.host,
        args.port,
    )
    uvicorn.run(
        create_app(service),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
    )
