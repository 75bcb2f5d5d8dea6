"""A TFLite autoencoder that trains on the device: the TensorFlow side (``train`` extra).

The pump ensemble's TFLite member (:mod:`models.ensemble_ae`) is pretrained once,
label-free, on a fleet's normal data and then *fine-tuned on each pump* by the TFLite
interpreter itself, as seed 000 describes (a new machine starts from the fleet baseline
and fine-tunes). :func:`build` makes a :class:`tf.Module` with four signatures that
:func:`to_tflite` converts with builtin ops only (resource variables: ``VAR_HANDLE``,
``READ_VARIABLE``, ``ASSIGN_VARIABLE``):

- ``infer(x) -> rec``: the reconstruction of each row;
- ``train(x, lr, l2) -> loss``: one full-batch Adam step on the rows ``x`` (mean squared
  error plus ``l2`` weight decay on the weights), gradients written out by hand, so no
  gradient op is needed;
- ``save() -> w0..w3, b0..b3``: the weights and biases;
- ``restore(w0..w3, b0..b3) -> ok``: set them and reset Adam's moments and step.

The network and the update are those of :class:`models.pump_detectors.DenseAutoencoder`
(``d-h-b-h-d`` tanh, linear output; Adam 0.9 / 0.999 / 1e-8): fed its initial weights,
600 TFLite steps score a prefix as the numpy model does, to float32 rounding.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

__all__ = ["SIGNATURES", "build", "pretrain", "to_tflite", "weights_of"]

Floats = npt.NDArray[np.float64]
_F = TypeVar("_F", bound=Callable[..., Any])
SIGNATURES = ("infer", "train", "save", "restore")
"""The converted model's signatures; ``infer`` first, so it is subgraph 0."""


def build(weights: list[Floats], biases: list[Floats]) -> Any:
    """A module holding ``weights``/``biases`` (4 layers) with the four signatures."""
    import tensorflow as tf  # noqa: PLC0415 - train extra only

    sizes = [weights[0].shape[0], *(w.shape[1] for w in weights)]
    row = tf.TensorSpec([None, sizes[0]], tf.float32)
    scalar = tf.TensorSpec([], tf.float32)
    specs = [tf.TensorSpec(w.shape, tf.float32) for w in weights]
    specs += [tf.TensorSpec(b.shape, tf.float32) for b in biases]

    class _AE(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.params = [tf.Variable(np.asarray(p, np.float32)) for p in [*weights, *biases]]
            self.m1 = [tf.Variable(tf.zeros_like(p)) for p in self.params]
            self.m2 = [tf.Variable(tf.zeros_like(p)) for p in self.params]
            self.step = tf.Variable(0.0)

        def forward(self, x: Any) -> list[Any]:
            acts = [x]
            for i in range(4):
                out = tf.matmul(acts[-1], self.params[i]) + self.params[4 + i]
                acts.append(tf.tanh(out) if i < 3 else out)
            return acts

        @_traced([row])
        def infer(self, x: Any) -> dict[str, Any]:
            return {"rec": self.forward(x)[-1]}

        @_traced([row, scalar, scalar])
        def train(self, x: Any, lr: Any, l2: Any) -> dict[str, Any]:
            acts = self.forward(x)
            n = tf.cast(tf.size(x), tf.float32)
            g = 2.0 * (acts[-1] - x) / n
            grads: list[Any] = [None] * 8
            for i in range(3, -1, -1):
                grads[i] = tf.matmul(acts[i], g, transpose_a=True) + l2 * self.params[i]
                grads[4 + i] = tf.reduce_sum(g, axis=0)
                if i:
                    g = tf.matmul(g, self.params[i], transpose_b=True) * (1.0 - acts[i] * acts[i])
            self.step.assign_add(1.0)
            c1, c2 = 1.0 - tf.pow(0.9, self.step), 1.0 - tf.pow(0.999, self.step)
            for p, m1, m2, gi in zip(self.params, self.m1, self.m2, grads, strict=True):
                m1.assign(0.9 * m1 + 0.1 * gi)
                m2.assign(0.999 * m2 + 0.001 * gi * gi)
                p.assign_sub(lr * (m1 / c1) / (tf.sqrt(m2 / c2) + 1e-8))
            return {"loss": tf.reduce_sum((acts[-1] - x) ** 2) / n}

        @_traced([])
        def save(self) -> dict[str, Any]:
            return dict(zip(_names(), self.params, strict=True))

        @_traced(specs)
        def restore(  # noqa: PLR0913 - the signature's inputs are named by its arguments
            self, w0: Any, w1: Any, w2: Any, w3: Any, b0: Any, b1: Any, b2: Any, b3: Any
        ) -> dict[str, Any]:
            for p, v in zip(self.params, (w0, w1, w2, w3, b0, b1, b2, b3), strict=True):
                p.assign(v)
            for m in self.m1 + self.m2:
                m.assign(tf.zeros_like(m))
            self.step.assign(0.0)
            return {"ok": tf.constant(1.0)}

    return _AE()


def _traced(spec: list[Any]) -> Callable[[_F], _F]:
    """``tf.function`` with an input signature, typed for mypy (TensorFlow has no stubs)."""
    import tensorflow as tf  # noqa: PLC0415 - train extra only

    return cast(Callable[[_F], _F], tf.function(input_signature=spec))


def _names() -> list[str]:
    return [f"w{i}" for i in range(4)] + [f"b{i}" for i in range(4)]


def weights_of(module: Any) -> dict[str, npt.NDArray[np.float32]]:
    """The module's parameters by signature name (``w0``..``w3``, ``b0``..``b3``)."""
    return {n: p.numpy() for n, p in zip(_names(), module.params, strict=True)}


def pretrain(module: Any, rows: Floats, steps: int, lr: float = 3e-3, l2: float = 1e-4) -> float:
    """Run ``steps`` full-batch Adam steps of ``module`` on ``rows``; the last step's MSE.

    The update is the ``train`` signature's, run by TensorFlow.
    """
    import tensorflow as tf  # noqa: PLC0415 - train extra only

    x = tf.constant(np.asarray(rows, np.float32))
    loss = float("nan")
    for _ in range(steps):
        loss = float(module.train(x, tf.constant(lr, tf.float32), tf.constant(l2, tf.float32))
                     ["loss"])  # fmt: skip
    return loss


def to_tflite(module: Any) -> bytes:
    """The module converted to TFLite with :data:`SIGNATURES`, builtin ops only."""
    import tensorflow as tf  # noqa: PLC0415 - train extra only

    sigs = {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=sigs)
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(SIGNATURES))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.experimental_enable_resource_variables = True
        out: bytes = conv.convert()
    return out
