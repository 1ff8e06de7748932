"""``python -m model_server --model-uri s3://bucket/models/digits/1/model.onnx``"""

from __future__ import annotations

import argparse
import os

import uvicorn

from model_runtime.onnx_model import OnnxModel
from model_server import artifacts
from model_server.app import create_app


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
    args = parser.parse_args(argv)
    model = OnnxModel(
        artifacts.fetch(args.model_uri),
        name=args.name,
        version=args.version,
        intra_op_threads=args.threads,
    )
    uvicorn.run(
        create_app(model), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
