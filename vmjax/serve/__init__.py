"""The model server: an exported model (vmjax.export) behind HTTP, with dynamic batching.

    python -m vmjax.serve --model model.bin --port 8000

POST /predict takes YT8M TFRecord bytes or JSON features and answers each video's top-k
classes; GET /healthz and GET /stats describe the model and the batching. docs/serving.md has
the formats, the knobs and the error table.

  inputs.py   request bodies -> model input rows (the pipeline's decoding and padding)
  batcher.py  dynamic batching of concurrent requests on one worker thread
  app.py      the FastAPI routes, the vocabulary, and the command line
"""

from vmjax.serve.app import Service, create_app, main
from vmjax.serve.batcher import Batcher, bucket_sizes
from vmjax.serve.inputs import InputSpec, RequestError

__all__ = [
    "Batcher",
    "InputSpec",
    "RequestError",
    "Service",
    "bucket_sizes",
    "create_app",
    "main",
]
