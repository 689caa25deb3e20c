"""Model server throughput and latency, with dynamic batching, without, and a bare endpoint.

  python benchmarks/serve.py                                  # makes a small model in a temp dir
  python benchmarks/serve.py --model model.npz --clients 32 --seconds 20
  python benchmarks/serve.py --model_name frame_moe --max_frames 64   # a made frame-level one

The servers (`python -m vmjax.serve`, subprocesses) start on the same model, one per mode, and
are warmed up; then `--clients` threads, each with its own keep-alive HTTP connection, POST the
same request (`--videos` videos as one TFRecord body, or JSON with --body json) back to back for
`--seconds`, to each server in turn, `--repeats` times. Printed per mode, from its median
run (by requests/s): requests/s, videos/s, p50/p99 latency (ms), the server's mean device batch
size and model-call time per video (its /stats); then the ratios of requests/s batched /
unbatched, batched / bare and batched / narrow.
Modes: `batched` (--max_batch, --max_wait_ms), `unbatched` (max_batch 1, max_wait_ms 0: one
video per model call), `bare`: a FastAPI endpoint on uvicorn that reads the body and returns
a constant (this script with --bare_port), the ceiling HTTP alone allows on this machine, and
`narrow`: batched with --no-wide_batches (the Dense kernels in their stored layout only).
Clients and server share this machine's CPUs: on a small machine the client threads take part
of the CPU the server could use, in every mode alike.
"""

import argparse
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

try:
    import httpx  # the HTTP client: in the test extra, not a runtime dependency of vmjax
except ImportError:
    sys.exit("benchmarks/serve.py needs httpx: pip install -e '.[test]' (or pip install httpx)")

from vmjax import export as export_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_model(tmp: str, model_name: str, max_frames: int, num_classes: int) -> str:
    """An exported model of random parameters (untrained; speed does not depend on training)."""
    import jax

    from vmjax import run as run_lib
    from vmjax.tools import configs
    from vmjax.train import setup
    from vmjax.train.checkpoint import Checkpointer

    config = configs.get_config(ROOT / "configs" / "yt8m.py", model_name)  # sets the level too
    config.data.num_classes = num_classes
    config.data.max_frames = max_frames
    workdir = os.path.join(tmp, "run")
    _, _, state = setup.init_run(config)
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    leaves = [
        0.02 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)
    ]
    state = state.replace(params=jax.tree.unflatten(treedef, leaves))
    with run_lib.training(config, workdir) as run:  # the run directory's owner writes it
        ckpt = Checkpointer(run.checkpoint_dir, 1)
        ckpt.save(0, state)
        ckpt.close()
    out = os.path.join(tmp, "model.npz")
    export_lib.export(workdir, out, log=lambda _: None)
    return out


def make_body(model: str, videos: int, body: str, seed: int = 0) -> tuple[bytes, str]:
    """(body, content type) of `videos` random videos of the kind the model takes."""
    from vmjax.data import tfrecord, yt8m

    header = export_lib.read_header(model)
    rng = np.random.default_rng(seed)
    frames = header["inputs"][0]["shape"][1] if header["data_level"] == "frame" else None
    items = []
    for i in range(videos):
        shape = () if frames is None else (frames,)
        rgb = rng.normal(0, 1, (*shape, yt8m.RGB_DIM)).astype(np.float32)
        audio = rng.normal(0, 1, (*shape, yt8m.AUDIO_DIM)).astype(np.float32)
        items.append((f"bench{i}", rgb, audio))
    if body == "json":
        doc = [{"id": i, "rgb": r.tolist(), "audio": a.tolist()} for i, r, a in items]
        return json.dumps(doc).encode(), "application/json"
    if frames is None:
        records = [yt8m.encode_video_example(i, [], r, a) for i, r, a in items]
    else:
        records = [
            yt8m.encode_frame_example(i, [], yt8m.quantize(r), yt8m.quantize(a))
            for i, r, a in items
        ]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "body.tfrecord")
        tfrecord.write_records(path, records)
        with open(path, "rb") as f:
            return f.read(), "application/x-tfrecord"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bare(port: int) -> None:
    """The bare server: reads each body and answers a constant, no parsing and no model."""
    import uvicorn
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        await request.body()
        return {"predictions": []}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_server(
    model: str, port: int, max_batch: int, max_wait_ms: float, clients: int, wide: bool = True
) -> subprocess.Popen:
    """The model server, with limits that let every client in (busy 503s would skew it)."""
    command = [sys.executable, "-m", "vmjax.serve", "--model", model, "--port", str(port)]
    command += ["--max_batch", str(max_batch), "--max_wait_ms", str(max_wait_ms)]
    command += ["--wide_batches" if wide else "--no-wide_batches"]
    command += ["--max_body_bytes", str(1 << 30), "--max_inflight_bytes", str(1 << 34)]
    command += ["--max_concurrent", str(max(64, 2 * clients)), "--log_level", "warning"]
    return wait_healthy(port, command)


def wait_healthy(port: int, command: list[str]) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not answer /healthz within 300 s")
        time.sleep(0.2)


def drive(url: str, body: bytes, content_type: str, clients: int, seconds: float) -> dict:
    """Clients POST back to back for `seconds`; latencies of the requests that finished in time."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            start.wait()
            while True:
                t = time.perf_counter()
                if t >= stop_at[0]:
                    return
                r = c.post("/predict", content=body, headers={"Content-Type": content_type})
                done = time.perf_counter()
                if r.status_code != 200:
                    errors[i] += 1
                elif done <= stop_at[0]:
                    latencies[i].append(done - t)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    begin = time.perf_counter()
    stop_at[0] = begin + seconds
    start.wait()
    for t in threads:
        t.join()
    all_latencies = sorted(x for xs in latencies for x in xs)
    n = len(all_latencies)
    return {
        "requests": n,
        "errors": sum(errors),
        "requests_per_s": n / seconds,
        "p50_ms": 1e3 * statistics.median(all_latencies) if n else float("nan"),
        "p99_ms": 1e3 * all_latencies[min(n - 1, int(0.99 * n))] if n else float("nan"),
    }


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def measure(url: str, args, body: bytes, content_type: str, stats: bool = True) -> dict:
    """One measured window against one server, with its /stats over that window."""
    if not stats:  # the bare server keeps none
        result = drive(url, body, content_type, args.clients, args.seconds)
        result["videos_per_s"] = result["requests_per_s"] * args.videos
        return result
    before = httpx.get(f"{url}/stats").json()
    result = drive(url, body, content_type, args.clients, args.seconds)
    after = httpx.get(f"{url}/stats").json()
    batches = after["device_batches"] - before["device_batches"]
    videos = after["batched_videos"] - before["batched_videos"]
    result["videos_per_s"] = result["requests_per_s"] * args.videos
    result["mean_batch_size"] = videos / batches if batches else 0.0
    device_s = [s["mean_device_ms"] * s["device_batches"] for s in (before, after)]
    result["device_ms_per_video"] = (device_s[1] - device_s[0]) / videos if videos else 0.0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", help="an exported model (default: make one of random parameters, --model_name)"
    )
    parser.add_argument(
        "--model_name",
        default="moe",
        help="the made model: a model preset of configs/yt8m.py (moe, logistic, frame_moe, ...)",
    )
    parser.add_argument("--max_frames", type=int, default=300, help="made frame-level model")
    parser.add_argument("--num_classes", type=int, default=3862, help="made model's classes")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode, alternated")
    parser.add_argument("--warmup_seconds", type=float, default=2.0, help="unmeasured, per mode")
    parser.add_argument("--videos", type=int, default=1, help="videos per request")
    parser.add_argument("--body", choices=("tfrecord", "json"), default="tfrecord")
    parser.add_argument("--max_batch", type=int, default=64, help="batched mode")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="batched mode")
    parser.add_argument("--bare_port", type=int, help=argparse.SUPPRESS)  # run the bare server
    args = parser.parse_args()
    if args.bare_port is not None:
        run_bare(args.bare_port)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(tmp, args.model_name, args.max_frames, args.num_classes)
        header = export_lib.read_header(model)
        body, content_type = make_body(model, args.videos, args.body)
        print(
            f"model {header['model']} ({header['data_level']}-level, {header['num_classes']} "
            f"classes, {header['num_parameters']:,} parameters); {args.clients} clients, "
            f"{args.videos} video(s) per {args.body} request ({len(body):,} bytes), "
            f"{args.repeats} runs of {args.seconds:g} s per mode; {os.cpu_count()} CPUs, load "
            f"average {os.getloadavg()[0]:.1f}"
        )
        modes = {
            "batched": f"max_batch {args.max_batch}, max_wait_ms {args.max_wait_ms:g}",
            "unbatched": "max_batch 1, max_wait_ms 0",
            "bare": "FastAPI endpoint: reads the body, answers a constant",
            "narrow": "as batched, with --no-wide_batches: one layout of the Dense kernels",
        }
        batched = {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
        settings = {
            "batched": batched,
            "unbatched": {"max_batch": 1, "max_wait_ms": 0.0},
            "narrow": {**batched, "wide": False},
        }
        servers, urls = {}, {}
        try:
            for name in modes:
                port = free_port()
                if name == "bare":
                    command = [sys.executable, __file__, "--bare_port", str(port)]
                    servers[name] = wait_healthy(port, command)
                else:
                    servers[name] = start_server(
                        model, port, clients=args.clients, **settings[name]
                    )
                urls[name] = f"http://127.0.0.1:{port}"
                drive(urls[name], body, content_type, args.clients, args.warmup_seconds)
            # All servers stay up (the idle ones cost nothing) and are measured in turn, so a
            # change in the machine's load hits every mode alike; the median run counts.
            runs = {name: [] for name in modes}
            for _ in range(args.repeats):
                for name in modes:
                    runs[name].append(
                        measure(urls[name], args, body, content_type, stats=name != "bare")
                    )
        finally:
            for server in servers.values():
                stop_server(server)
        results = {}
        for name, setting in modes.items():
            each = sorted(runs[name], key=lambda r: r["requests_per_s"])
            r = results[name] = each[len(each) // 2]
            device = (
                ""
                if name == "bare"
                else f"mean device batch {r['mean_batch_size']:.1f} "
                f"({r['device_ms_per_video']:.2f} ms of model call per video), "
            )
            print(
                f"{name:9s} ({setting}): "
                f"{r['requests_per_s']:.1f} requests/s, {r['videos_per_s']:.1f} videos/s, "
                f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {device}"
                f"errors {sum(x['errors'] for x in each)}; requests/s of each run: "
                + " ".join(f"{x['requests_per_s']:.1f}" for x in runs[name]),
                flush=True,
            )
        batched = results["batched"]["requests_per_s"]
        for other in ("unbatched", "bare", "narrow"):
            ratio = batched / max(results[other]["requests_per_s"], 1e-9)
            print(f"ratio batched/{other} requests/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
