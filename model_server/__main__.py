"""``python -m model_server --model-uri s3://bucket/models/digits/1/model.onnx``"""

from __future__ import annotations

import argparse
import os

from gateway.adapters.http_server import serve
from model_runtime.onnx_model import OnnxModel
from model_server import artifacts
from model_server.app import INLINE_ROWS, create_app
from model_server.batching import BatchPolicy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="model_server", description=__doc__)
    parser.add_argument("--model-uri", required=True, help="s3://bucket/key or a file path")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default="1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", 8080))
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    # Batching is off by default, as in Triton and KServe: on this project's models
    # bench/model_server.py measures it 0.79-0.91x at c=8 (a loss in every run) and
    # 1.02-1.15x at c=32. A request's HTTP, parsing and encoding cost more than its share of
    # the model call, and batching shares only the call; a model whose call dominates (a
    # GPU model) gains. No delay by default when on: under closed-loop load a delay only
    # idles the server, and batches form from what arrives while the event loop is busy.
    parser.add_argument(
        "--batch-max-rows",
        type=int,
        default=int(os.environ.get("MODEL_SERVER_BATCH_MAX_ROWS", 1)),
        help="dynamic batching: at most this many rows per model call; <= 1 (the default) "
        "turns it off",
    )
    parser.add_argument(
        "--batch-delay-ms",
        type=float,
        default=float(os.environ.get("MODEL_SERVER_BATCH_DELAY_MS", 0.0)),
        help="dynamic batching: how long the oldest request may wait for others to join it",
    )
    parser.add_argument(
        "--batch-inline-rows",
        type=int,
        default=INLINE_ROWS,
        help="dynamic batching: batches of at most this many rows run on the event loop, "
        "larger ones in a worker thread (0: always in the thread, for a slow model)",
    )
    args = parser.parse_args(argv)
    if args.batch_delay_ms < 0:
        parser.error("--batch-delay-ms must be >= 0")
    model = OnnxModel(
        artifacts.fetch(args.model_uri),
        name=args.name,
        version=args.version,
        intra_op_threads=args.threads,
    )
    batching = (
        BatchPolicy(args.batch_max_rows, args.batch_delay_ms / 1000, args.batch_inline_rows)
        if args.batch_max_rows > 1
        else None
    )
    serve(create_app(model, batching), args.host, args.port)


if __name__ == "__main__":
    main()
