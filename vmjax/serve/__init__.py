"""The model server: an exported model (vmjax.export) behind HTTP, with dynamic batching.

    python -m vmjax.serve --model model.npz --port 8000

POST /predict takes YT8M TFRecord bytes or JSON features and answers each video's top-k
classes (or, for an encoder run's video-side tower, its embedding); GET /healthz and GET /stats
describe the model and the batching. docs/serving.md has the formats, the knobs and the error
table.

  inputs.py      request bodies -> model input rows (the pipeline's decoding and padding);
                 TFRecord bodies
  jsonbody.py    JSON bodies -> the same rows, read by jsonscan.py (bounded: no Python float
                 per number, no recursion)
  batcher.py     dynamic batching of concurrent requests on one worker thread
  limits.py      body size, timeouts and admission (503 when full)
  auth.py        the optional bearer token; refusing non-loopback addresses without one
  connection.py  uvicorn's connection settings and a deadline for request headers
  app.py         the FastAPI routes and the vocabulary
  cli.py         the command line
"""

from vmjax.serve.app import Service, create_app
from vmjax.serve.batcher import Batcher, bucket_sizes
from vmjax.serve.cli import main
from vmjax.serve.connection import uvicorn_config
from vmjax.serve.errors import RequestError
from vmjax.serve.inputs import InputSpec
from vmjax.serve.limits import Limits

__all__ = [
    "Batcher",
    "InputSpec",
    "Limits",
    "RequestError",
    "Service",
    "bucket_sizes",
    "create_app",
    "main",
    "uvicorn_config",
]
