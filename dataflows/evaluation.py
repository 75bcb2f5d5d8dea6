"""Score alerts against labelled anomalies (the simulator's, or a labelled dataset's)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from operators.records import Alert

__all__ = ["EXCLUDED_KINDS", "Evaluation", "evaluate_alerts"]

EXCLUDED_KINDS = frozenset({"dropout"})
"""Label kinds that are data-quality events handled by imputation, not value anomalies."""


@dataclass(frozen=True)
class Evaluation:
    """Reading-level precision/recall and episode-level detection per anomaly kind."""

    true_positives: int
    alerts: int
    labelled: int
    episodes: dict[str, tuple[int, int]]
    """kind → (episodes with at least one alert, episodes injected)."""

    @property
    def precision(self) -> float:
        """Share of alerts that fall on a labelled anomalous reading."""
        return self.true_positives / self.alerts if self.alerts else 0.0

    @property
    def recall(self) -> float:
        """Share of labelled anomalous readings that raised an alert."""
        hits = self.true_positives
        return hits / self.labelled if self.labelled else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def evaluate_alerts(
    alerts: Iterable[Alert], labels: Mapping[tuple[str, int], str], gap_s: int = 3600
) -> Evaluation:
    """Compare alerts with labels ``{(sensor_id, epoch_seconds): kind}``.

    Readings of one sensor and kind closer than ``gap_s`` form one episode.

    >>> from datetime import datetime, timezone
    >>> t = datetime.fromtimestamp(120, timezone.utc)
    >>> a = Alert("x", "s1", "f", "hst", 0.9, 0.7, t, t, {})
    >>> ev = evaluate_alerts([a], {("s1", 120): "spike", ("s1", 240): "spike"})
    >>> ev.precision, ev.recall, ev.episodes
    (1.0, 0.5, {'spike': (1, 1)})
    """
    wanted = {k: v for k, v in labels.items() if v not in EXCLUDED_KINDS}
    flagged = {(a.sensor_id, int(a.ts.timestamp())) for a in alerts}
    tp = len(flagged & wanted.keys())
    episodes: dict[str, tuple[int, int]] = {}
    for kind, members in _episodes(wanted, gap_s):
        hit = any(m in flagged for m in members)
        done, total = episodes.get(kind, (0, 0))
        episodes[kind] = (done + hit, total + 1)
    return Evaluation(tp, len(flagged), len(wanted), episodes)


def _episodes(
    labels: Mapping[tuple[str, int], str], gap_s: int
) -> list[tuple[str, list[tuple[str, int]]]]:
    out: list[tuple[str, list[tuple[str, int]]]] = []
    for key in sorted(labels, key=lambda k: (k[0], labels[k], k[1])):
        kind = labels[key]
        if out and out[-1][0] == kind and _same(out[-1][1][-1], key, gap_s):
            out[-1][1].append(key)
        else:
            out.append((kind, [key]))
    return out


def _same(prev: tuple[str, int], cur: tuple[str, int], gap_s: int) -> bool:
    return prev[0] == cur[0] and cur[1] - prev[1] <= gap_s
