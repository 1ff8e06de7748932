"""An ONNX model loaded into onnxruntime, with its input contract read from the graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from gateway.errors import SchemaMismatchError


def preferred_providers(available: list[str] | None = None) -> list[str]:
    """CUDA first when the installed onnxruntime has it, CPU always as the fallback."""
    have = ort.get_available_providers() if available is None else available
    order = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in have] or ["CPUExecutionProvider"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    features: int | None
    outputs: tuple[str, ...]
    providers: tuple[str, ...]


class OnnxModel:
    def __init__(
        self,
        model: bytes | str,
        *,
        name: str,
        version: str,
        intra_op_threads: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        options = ort.SessionOptions()
        # Small tabular models run fastest single-threaded; parallelism comes from batching
        # and from running several requests at once.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            model, sess_options=options, providers=providers or preferred_providers()
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{name}: models with {len(inputs)} inputs are not supported")
        width = inputs[0].shape[-1] if inputs[0].shape else None
        self.info = ModelInfo(
            name=name,
            version=version,
            input_name=inputs[0].name,
            features=width if isinstance(width, int) else None,
            outputs=tuple(o.name for o in self._session.get_outputs()),
            providers=tuple(self._session.get_providers()),
        )
        self._output_names = list(self.info.outputs)

    def predict(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        self.check(matrix)
        # The output names given, not None, so that onnxruntime does not list them per call.
        values = self._session.run(self._output_names, {self.info.input_name: matrix})
        return dict(zip(self.info.outputs, values, strict=True))

    def check(self, matrix: np.ndarray) -> None:
        """What ``predict`` refuses, without running the model (a batcher checks each
        request alone, so that a bad one never fails a batch)."""
        if matrix.ndim != 2:
            raise SchemaMismatchError(f"Expected a 2-D batch; got shape {list(matrix.shape)}.")
        features = self.info.features
        if features is not None and matrix.shape[1] != features:
            raise SchemaMismatchError(
                f"Rows have {matrix.shape[1]} features; the model expects {features}.",
                expected_features=features,
                got_features=int(matrix.shape[1]),
            )
