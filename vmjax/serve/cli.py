"""python -m vmjax.serve: flags checked at the door (exit status 2, a line or two), then uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from vmjax.serve.auth import TOKEN_ENV, is_loopback
from vmjax.serve.limits import Limits

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
DEFAULT = Limits()

EXAMPLE = f"""example:
  python -m vmjax.main --config configs/yt8m.py:smoke --workdir /tmp/run
  python -m vmjax.export --workdir /tmp/run --out /tmp/model.npz
  python -m vmjax.serve --model /tmp/model.npz --port 8000
  curl -s --data-binary @validate00.tfrecord -H 'Content-Type: application/x-tfrecord' \\
      'localhost:8000/predict?top_k=5'
  curl -s localhost:8000/healthz; curl -s localhost:8000/stats

  # other machines: a token is required (prefer the environment to --token: ps shows flags)
  {TOKEN_ENV}=s3cret python -m vmjax.serve --model /tmp/model.npz --host 0.0.0.0
  curl -s -H 'Authorization: Bearer s3cret' ...

See docs/serving.md for the request and response formats, the limits and the error table."""


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a `kind` in [low, high] (high None: no upper bound)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low:g}" if high is None else f"{low:g}..{high:g}"
            raise argparse.ArgumentTypeError(f"{text} is outside the allowed range: {allowed}")
        return value

    return parse


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(kind, 0)(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    return parse


def _existing_file(text: str) -> str:
    if not os.path.isfile(os.path.expanduser(text)):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vmjax.serve",
        # Short: argparse prints the usage above every error, and errors should be a line or two.
        usage="%(prog)s --model MODEL [options] (--help lists them)",
        description="Serve an exported vmjax model (vmjax.export's model.npz) over HTTP: "
        "POST /predict with YT8M TFRecords or JSON features returns each video's top classes "
        "(a classifier) or its embedding (an encoder run's video, rgb or audio tower); "
        "concurrent requests are batched dynamically.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--model", required=True, type=_existing_file, help="the exported model file (model.npz)")
    add(
        "--host",
        default="127.0.0.1",
        help="address to listen on (%(default)s); any address "
        f"beyond loopback needs a token (--token or {TOKEN_ENV})",
    )
    add("--port", type=_number(int, 0, 65535), default=8000, help="port, 0..65535 (%(default)s)")
    add(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' on every route but /healthz (default: the "
        f"{TOKEN_ENV} environment variable; prefer it: other users can see flags in ps)",
    )
    add(
        "--vocabulary",
        default=None,
        type=_existing_file,
        help="CSV with Index and Name columns for class names (default: the bundled YouTube-8M "
        "2018 vocabulary for a 3862-class model, else no names); classifiers only",
    )
    add(
        "--top_k",
        type=_number(int, 1),
        default=20,
        help="classes per video (%(default)s); an encoder's answer has none",
    )
    add(
        "--max_batch",
        type=_number(int, 1),
        default=64,
        help="most videos in one model call; 1 turns batching off (%(default)s)",
    )
    add(
        "--max_wait_ms",
        type=_number(float, 0),
        default=5.0,
        help="how long the first queued video waits for others to batch with; 0 runs each "
        "request on its own (%(default)s)",
    )
    add(
        "--wide_batches",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a CPU, model calls of 4 or more videos read a transposed copy of each Dense "
        "kernel, which XLA multiplies faster (the kernels' memory doubles; the scores are the "
        "same up to float rounding); --no-wide_batches keeps one copy (on)",
    )
    limits = parser.add_argument_group("limits (answers: 413 too large, 408 too slow, 503 full)")
    add = limits.add_argument
    add(
        "--max_body_bytes",
        type=_number(int, 1),
        default=DEFAULT.max_body_bytes,
        help="larger request bodies get 413 (%(default)s)",
    )
    add(
        "--max_concurrent",
        type=_number(int, 1),
        default=DEFAULT.max_concurrent,
        help="most /predict requests being read or worked on at once; more get 503 with "
        "Retry-After (%(default)s)",
    )
    add(
        "--max_inflight_bytes",
        type=_number(int, 1),
        default=DEFAULT.max_inflight_bytes,
        help="most body bytes of those requests together (a chunked body counts as "
        "--max_body_bytes); more get 503 with Retry-After; bounds the server's memory "
        "(%(default)s)",
    )
    add(
        "--request_timeout_s",
        type=_positive(float),
        default=DEFAULT.request_timeout_s,
        help="most seconds from a request's body being read to its answer (parsing, batching, "
        "the model); past it 503 with Retry-After (%(default)s)",
    )
    add(
        "--body_timeout_s",
        type=_positive(float),
        default=DEFAULT.body_timeout_s,
        help="the whole body must arrive within this many seconds, else 408 (%(default)s)",
    )
    add(
        "--header_timeout_s",
        type=_positive(float),
        default=DEFAULT.header_timeout_s,
        help="a request's line and headers must arrive within this many seconds of the "
        "connection opening or the previous answer, else the connection is closed (with 408 "
        "if part came) (%(default)s)",
    )
    add(
        "--keep_alive_s",
        type=_positive(float),
        default=DEFAULT.keep_alive_s,
        help="an idle connection is closed after this many seconds (%(default)s)",
    )
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "--log_level", default="info", choices=LOG_LEVELS, help="uvicorn log level (%(default)s)"
    )
    logs.add_argument("--access_log", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.strip():
        parser.error("--token is empty")
    try:
        limits = Limits(
            max_body_bytes=args.max_body_bytes,
            max_concurrent=args.max_concurrent,
            max_inflight_bytes=args.max_inflight_bytes,
            request_timeout_s=args.request_timeout_s,
            body_timeout_s=args.body_timeout_s,
            header_timeout_s=args.header_timeout_s,
            keep_alive_s=args.keep_alive_s,
        )
    except ValueError as e:
        parser.error(str(e))
    if token is None and not is_loopback(args.host):
        _exit(
            f"refusing to listen on {args.host} (not a loopback address) without a token: pass "
            f"--token or set {TOKEN_ENV}, or listen on --host 127.0.0.1"
        )

    # Bound before the model loads (which takes a while): a port in use fails at once.
    sock = _bind(args.host, args.port)

    import uvicorn

    from vmjax.serve.app import Service, create_app
    from vmjax.serve.connection import uvicorn_config

    # uvicorn's 'trace' is below debug; the standard library has no such level.
    level = logging.getLevelName("DEBUG" if args.log_level == "trace" else args.log_level.upper())
    # force: an import may already have put a handler on the root logger (basicConfig would then
    # do nothing and the INFO lines below would be lost). Other libraries (jax) stay at WARNING.
    root_level = max(level, logging.WARNING)
    logging.basicConfig(level=root_level, format="%(levelname)s: %(message)s", force=True)
    log = logging.getLogger("vmjax.serve")
    log.setLevel(level)
    try:
        service = Service(
            args.model,
            vocabulary=args.vocabulary,
            top_k=args.top_k,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            limits=limits,
            wide_batches=args.wide_batches,
        )
    except (ValueError, OSError) as e:  # ExportError is a ValueError: a file that is no model
        sock.close()
        _exit(str(e))
    h = service.health()
    if h["num_classes"] is None:
        answers = f"{h['output']} of {h['embedding_dim']} dims"
    else:
        answers = f"{h['num_classes']} classes"
    log.info(
        "Serving %s (%s, %s-level, %s; batch sizes %s) on http://%s:%d%s",
        args.model,
        h["model"],
        h["input_kind"],
        answers,
        h["batch_sizes"],
        args.host,
        sock.getsockname()[1],  # the port taken, also for --port 0
        "" if token is None else " (token required)",
    )
    config = uvicorn_config(
        create_app(service, token),
        limits,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT once it has shut down (as uvicorn.run)
        pass


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError) as e:
        _exit(f"cannot listen on {host}:{port}: {e}")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        _exit(f"cannot listen on {host}:{port}: {e.strerror or e}")
    return sock


def _exit(message: str) -> NoReturn:
    print(f"python -m vmjax.serve: error: {message}", file=sys.stderr)
    sys.exit(2)
