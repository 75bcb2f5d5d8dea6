"""A labelled Prometheus histogram observed a numpy array at a time.

``prometheus_client.Histogram`` observes one value per call under a lock; a flow that
scores 100,000 readings a second cannot afford that. :class:`BatchHistogram` counts a
whole array per call (``numpy.searchsorted`` + ``bincount``) and exposes ordinary
``_bucket``/``_count``/``_sum`` series when Prometheus scrapes.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> h = BatchHistogram("demo_score", "Scores.", ["detector"], buckets=(0.5, 1.0))
>>> h.observe_many(("hst",), np.array([0.25, 0.75, 1.0, float("nan")]))
>>> registry = CollectorRegistry()
>>> registry.register(h)
>>> for line in generate_latest(registry).decode().splitlines():
...     if line.startswith("demo_score_"):
...         print(line)
demo_score_bucket{detector="hst",le="0.5"} 1.0
demo_score_bucket{detector="hst",le="1.0"} 3.0
demo_score_bucket{detector="hst",le="+Inf"} 3.0
demo_score_count{detector="hst"} 3.0
demo_score_sum{detector="hst"} 2.0
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["BatchHistogram"]


class BatchHistogram(Collector):
    """A histogram with labels whose observations come in numpy arrays.

    Args:
        name: Metric name without the ``_bucket``/``_count``/``_sum`` suffix.
        documentation: Help text.
        labelnames: Label names; :meth:`observe_many` takes their values in this order.
        buckets: Finite upper bounds (``+Inf`` is added).
    """

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Iterable[float]
    ) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._bounds = np.array(sorted(float(b) for b in buckets), dtype=np.float64)
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], tuple[npt.NDArray[np.int64], list[float]]] = {}
        self._lock = threading.Lock()

    def _get(self, labels: tuple[str, ...]) -> tuple[npt.NDArray[np.int64], list[float]]:
        series = self._series.get(labels)
        if series is None:
            if len(labels) != len(self.labelnames):
                msg = f"{self.name} takes labels {self.labelnames}, got {labels}"
                raise ValueError(msg)
            series = self._series[labels] = (np.zeros(len(self._les), np.int64), [0.0])
        return series

    def touch(self, labels: tuple[str, ...]) -> None:
        """Create the series with zero counts (so it is scraped before any observation)."""
        with self._lock:
            self._get(labels)

    def observe_many(self, labels: tuple[str, ...], values: npt.ArrayLike) -> None:
        """Observe every value of an array (``NaN`` values are skipped)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if not v.size:
            return
        counts = np.bincount(
            np.searchsorted(self._bounds, v, side="left"), minlength=len(self._les)
        )
        total = float(v.sum())
        with self._lock:
            buckets, sum_ = self._get(labels)
            buckets += counts
            sum_[0] += total

    def describe(self) -> Iterator[Metric]:
        """The family without samples (for the registry's duplicate-name check)."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        """The cumulative buckets, count and sum of every series."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(k, np.cumsum(b), s[0]) for k, (b, s) in self._series.items()]
        for labels, cumulative, total in series:
            buckets = list(zip(self._les, cumulative.astype(float).tolist(), strict=True))
            family.add_metric(list(labels), buckets, sum_value=total)
        yield family
