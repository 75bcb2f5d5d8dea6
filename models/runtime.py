"""TFLite models at run time: interpreter loading, integrity check and batched inference.

The interpreter comes from the first of ``ai_edge_litert`` (works with numpy 2),
``tflite_runtime`` and ``tensorflow.lite`` that imports; TensorFlow itself is never
needed. Every artifact ``NAME.tflite`` ships with ``NAME.json`` metadata (features,
scaler, threshold, window, input shape, SHA-256 of the model and of its training data,
training metrics, versions); :meth:`TFLiteModel.load` refuses a model file whose SHA-256
differs from the metadata's.

Fused LSTM ops keep their state in variable tensors between invocations, so
:meth:`TFLiteModel.predict` resets every variable before each invoke: every window starts
from a zero state. A model whose batch dimension is dynamic scores up to ``max_batch``
rows per invoke; one exported with a fixed batch ``B`` scores ``B`` at a time, the last
chunk padded.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "ARTIFACTS",
    "INTERPRETER_MODULES",
    "ModelIntegrityError",
    "ModelMetadata",
    "RuntimeMissingError",
    "SharedModelDetector",
    "TFLiteModel",
    "cached_model",
    "interpreter_class",
    "normalise",
    "sha256_file",
]

ARTIFACTS = Path(__file__).parent / "artifacts"
"""Where the shipped models live."""

INTERPRETER_MODULES = (
    "ai_edge_litert.interpreter",
    "tflite_runtime.interpreter",
    "tensorflow.lite",
)
"""Modules tried in order for an ``Interpreter`` class."""

Floats32 = npt.NDArray[np.float32]


class RuntimeMissingError(ImportError):
    """No TFLite interpreter can be imported."""


class ModelIntegrityError(ValueError):
    """A model file's SHA-256 is not the one its metadata records."""


def interpreter_class() -> Callable[..., Any]:
    """The ``Interpreter`` class of the first importable module of :data:`INTERPRETER_MODULES`.

    Raises:
        RuntimeMissingError: None imports; the message says what to install.
    """
    for name in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.Interpreter  # type: ignore[no-any-return]
    msg = (
        "no TFLite interpreter found: pip install ai-edge-litert "
        "(or tflite-runtime with numpy<2, or tensorflow)"
    )
    raise RuntimeMissingError(msg)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelMetadata:
    """What ``NAME.json`` says about ``NAME.tflite`` (see ``models/train.py``).

    Attributes:
        name: Artifact name, e.g. ``"pump_autoencoder"``.
        kind: ``"autoencoder"`` (score = reconstruction error) or ``"classifier"``
            (score = probability of an anomalous window).
        features: The model's input features, in column order.
        inputs: The reading fields the detector reads, in column order.
        window: Readings per window (rolling-feature window for the autoencoder).
        input_shape: The model's input shape; ``-1`` or ``None`` marks a dynamic batch.
        threshold: Raw output above which a row is anomalous.
        scaler: Scaling applied before the model (``mean``/``scale`` or ``min``/``max``).
        sha256: SHA-256 of the ``.tflite`` file.
        raw: The whole JSON document (training metrics, versions, data digest, …).
    """

    name: str
    kind: str
    features: tuple[str, ...]
    inputs: tuple[str, ...]
    window: int
    input_shape: tuple[int, ...]
    threshold: float
    scaler: dict[str, list[float]]
    sha256: str
    raw: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> ModelMetadata:
        """Parse a metadata JSON file."""
        doc = orjson.loads(Path(path).read_bytes())
        return cls(
            name=doc["name"],
            kind=doc["kind"],
            features=tuple(doc["features"]),
            inputs=tuple(doc["inputs"]),
            window=int(doc["window"]),
            input_shape=tuple(-1 if d is None else int(d) for d in doc["input_shape"]),
            threshold=float(doc["threshold"]),
            scaler={k: [float(v) for v in vs] for k, vs in doc["scaler"].items()},
            sha256=doc["sha256"],
            raw=doc,
        )


class TFLiteModel:
    """A loaded TFLite model and its metadata; build it with :meth:`load`.

    Args:
        interpreter: An allocated TFLite ``Interpreter``.
        metadata: The model's metadata.
        path: The model file.
        max_batch: Most rows per invoke when the batch dimension is dynamic.
    """

    def __init__(
        self, interpreter: Any, metadata: ModelMetadata, path: Path, max_batch: int = 4096
    ) -> None:
        self.interpreter = interpreter
        self.metadata = metadata
        self.path = path
        self.max_batch = max_batch
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]
        self._fixed = int(self._input["shape_signature"][0]) > 0
        self._batch = int(self._input["shape"][0])
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path: str | Path, num_threads: int = 1, metadata: str | Path | None = None
    ) -> TFLiteModel:
        """Verify ``path`` against its metadata (``path`` with ``.json``), then load it.

        Raises:
            ModelIntegrityError: The file's SHA-256 is not the metadata's.
            RuntimeMissingError: No interpreter module is installed.
        """
        path = Path(path)
        meta = ModelMetadata.read(metadata or path.with_suffix(".json"))
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        if digest != meta.sha256:
            msg = f"{path}: SHA-256 {digest} differs from its metadata's {meta.sha256}"
            raise ModelIntegrityError(msg)
        interpreter = interpreter_class()(model_content=content, num_threads=num_threads)
        interpreter.allocate_tensors()
        return cls(interpreter, meta, path)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model was exported with, or ``None`` when it is dynamic."""
        return self._batch if self._fixed else None

    def op_names(self) -> set[str]:
        """Names of the ops in the model's graph (``CUSTOM``/``Flex…`` would be non-builtin).

        Read from a second interpreter without default delegates, whose nodes are the
        model's own ops rather than the XNNPACK ``DELEGATE`` node that replaces them.
        """
        cls = interpreter_class()
        resolver = importlib.import_module(cls.__module__).OpResolverType
        it = cls(
            model_path=str(self.path),
            experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        it.allocate_tensors()
        return {d["op_name"] for d in it._get_ops_details()}

    def predict(self, x: npt.ArrayLike) -> Floats32:
        """Run the model over a batch of rows (``x.shape[0]``); LSTM state reset per invoke."""
        rows = np.ascontiguousarray(x, dtype=np.float32)
        n = rows.shape[0]
        if n == 0:
            return np.zeros((0, *self._output["shape"][1:]), dtype=np.float32)
        size = self._batch if self._fixed else min(n, self.max_batch)
        parts = []
        with self._lock:
            for lo in range(0, n, size):
                chunk = rows[lo : lo + size]
                parts.append(self._invoke(chunk, size)[: chunk.shape[0]])
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _invoke(self, chunk: Floats32, size: int) -> Floats32:
        it, index = self.interpreter, self._input["index"]
        if self._fixed and chunk.shape[0] < size:
            pad = np.zeros((size - chunk.shape[0], *chunk.shape[1:]), dtype=np.float32)
            chunk = np.concatenate([chunk, pad])
        elif not self._fixed and chunk.shape[0] != self._batch:
            it.resize_tensor_input(index, list(chunk.shape), strict=True)
            it.allocate_tensors()
            self._batch = chunk.shape[0]
        it.reset_all_variables()
        it.set_tensor(index, chunk)
        it.invoke()
        return it.get_tensor(self._output["index"]).copy()  # type: ignore[no-any-return]


_CACHE: dict[tuple[str, int], TFLiteModel] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(name_or_path: str | Path, num_threads: int = 1) -> TFLiteModel:
    """One shared :class:`TFLiteModel` per file and thread count in this process.

    Args:
        name_or_path: A shipped artifact's name (``"pump_autoencoder"``) or a file path.
        num_threads: Interpreter threads.
    """
    path = Path(name_or_path)
    if path.suffix != ".tflite":
        path = ARTIFACTS / f"{name_or_path}.tflite"
    key = (str(path.resolve()), num_threads)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = TFLiteModel.load(path, num_threads)
        return _CACHE[key]


def normalise(raw: npt.ArrayLike, threshold: float, kind: str) -> npt.NDArray[np.float64]:
    """Map raw model outputs into ``[0, 1]`` so that the model's threshold maps to 0.5.

    A reconstruction error ``e`` becomes ``q / (1 + q)`` with ``q = e / threshold``; a
    probability ``p`` does the same with ``q`` the ratio of the odds of ``p`` and of the
    threshold (so a 0.5 threshold leaves probabilities as they are).

    >>> normalise([0.0, 0.1, 0.3], 0.1, "autoencoder").round(3).tolist()
    [0.0, 0.5, 0.75]
    >>> normalise([0.2, 0.5, 1.0], 0.5, "classifier").round(3).tolist()
    [0.2, 0.5, 1.0]
    """
    r = np.asarray(raw, dtype=np.float64)
    if kind == "classifier":
        p, t = np.clip(r, 0.0, 1.0), threshold
        num = p * (1.0 - t)
        return num / np.maximum(num + t * (1.0 - p), 1e-300)
    q = np.maximum(r, 0.0) / threshold
    return q / (1.0 + q)


class SharedModelDetector:
    """Base of per-key detectors that share one :class:`TFLiteModel` and keep a history.

    Only the history (the last raw rows a window needs) is per key; the model is looked
    up by path in :func:`cached_model`, so a pickled detector holds the path and the
    history only, a few hundred bytes.

    Args:
        model: The shared model.
        history: How many past rows to keep.
        columns: Columns of a row.
    """

    def __init__(self, model: TFLiteModel, history: int, columns: int) -> None:
        self.model = model
        self._history = np.zeros((0, columns), dtype=np.float64)
        self._keep = history

    def _extend(self, x: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], int]:
        """History followed by ``x``, and the history's length; the history moves on."""
        rows = np.asarray(x, dtype=np.float64).reshape(-1, self._history.shape[1])
        buf = np.concatenate([self._history, rows])
        self._history = buf[max(0, len(buf) - self._keep) :].copy()
        return buf, len(buf) - len(rows)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.model.path), "history": self._history, "keep": self._keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = cached_model(state["path"])
        self._history = state["history"]
        self._keep = state["keep"]
