"""Deterministic demo models: trained on scikit-learn's bundled datasets, converted with
skl2onnx. The same build gives byte-identical ONNX files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.base import ClassifierMixin
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 0
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class BuiltModel:
    name: str
    version: str
    onnx: bytes
    features: int
    accuracy: float
    description: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


def digits_split() -> Split:
    """8x8 digit images as 64 floats; the held-out quarter is what tests invoke with."""
    data = load_digits()
    parts = train_test_split(
        data.data.astype(np.float32),
        data.target,
        test_size=0.25,
        random_state=SEED,
        stratify=data.target,
    )
    return Split(*parts)


def breast_cancer_split() -> Split:
    data = load_breast_cancer()
    parts = train_test_split(
        data.data.astype(np.float32),
        data.target,
        test_size=0.25,
        random_state=SEED,
        stratify=data.target,
    )
    return Split(*parts)


def _convert(model: ClassifierMixin | Pipeline, sample: np.ndarray, name: str) -> bytes:
    onnx_model = to_onnx(
        model,
        sample[:1],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
        naming=name,
    )
    onnx_model.producer_version = "fixed"  # the file must not depend on the build host
    onnx_model.doc_string = ""
    return onnx_model.SerializeToString(deterministic=True)  # type: ignore[no-any-return]


def build_digits() -> BuiltModel:
    split = digits_split()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    model.fit(split.x_train, split.y_train)
    return BuiltModel(
        name="digits",
        version="1",
        onnx=_convert(model, split.x_train, "digits_"),
        features=64,
        accuracy=float(model.score(split.x_test, split.y_test)),
        description="Handwritten digit (8x8 pixels, 64 floats 0-16) to its label 0-9.",
    )


def build_breast_cancer() -> BuiltModel:
    split = breast_cancer_split()
    model = RandomForestClassifier(n_estimators=64, max_depth=8, random_state=SEED, n_jobs=1)
    model.fit(split.x_train, split.y_train)
    return BuiltModel(
        name="breast-cancer",
        version="1",
        onnx=_convert(model, split.x_train, "breast_cancer_"),
        features=30,
        accuracy=float(model.score(split.x_test, split.y_test)),
        description="Tabular: 30 tumour measurements to malignant (0) or benign (1).",
    )


BUILDERS: dict[str, Callable[[], BuiltModel]] = {
    "digits": build_digits,
    "breast-cancer": build_breast_cancer,
}


def build_all(out_dir: Path, report: Callable[[str], None] = print) -> list[BuiltModel]:
    """Build every demo model into ``out_dir/{name}/{version}/model.onnx`` with metadata."""
    built = []
    for builder in BUILDERS.values():
        model = builder()
        target = out_dir / model.name / model.version
        target.mkdir(parents=True, exist_ok=True)
        (target / "model.onnx").write_bytes(model.onnx)
        (target / "metadata.json").write_text(
            json.dumps(
                {
                    "name": model.name,
                    "version": model.version,
                    "features": model.features,
                    "accuracy": model.accuracy,
                    "sha256": model.sha256,
                    "description": model.description,
                },
                indent=2,
            )
        )
        report(
            f"built {model.name} v{model.version}: held-out accuracy {model.accuracy:.4f}, "
            f"sha256 {model.sha256[:12]}"
        )
        built.append(model)
    return built
