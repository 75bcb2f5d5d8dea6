"""PNG plots of one SKAB file's ensemble run (``edgewatch evaluate --plot``; needs matplotlib)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dataflows.settings import ConfigError
from models.ensemble import DETECTORS, EnsembleConfig, EnsembleScores

__all__ = ["plot_file", "require_matplotlib"]


def require_matplotlib() -> None:
    """Raise a :class:`ConfigError` saying how to install matplotlib when it is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        msg = "--plot needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
        raise ConfigError(msg)


def plot_file(
    out: Path, title: str, res: EnsembleScores, labels: npt.NDArray[np.bool_], cfg: EnsembleConfig
) -> None:
    """One panel per detector (score, threshold, flags) and one of votes against labels."""
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(DETECTORS) + 1, 1, figsize=(11, 8), sharex=True)
    t = np.arange(len(labels))
    for j, (ax, name) in enumerate(zip(axes, DETECTORS, strict=False)):
        ax.plot(t, res.scores[:, j], lw=0.8, label=f"{name} score")
        ax.plot(t, res.thresholds[:, j], "r--", lw=0.8, label="threshold")
        ax.fill_between(t, 0, 1, where=labels, color="orange", alpha=0.2,
                        transform=ax.get_xaxis_transform(), label="anomaly")  # fmt: skip
        if name != "hst":  # HST scores lie in [0, 1]; the distances span decades
            ax.set_yscale("symlog")
        ax.legend(loc="upper left", fontsize=7)
    ax = axes[-1]
    ax.step(t, res.votes, where="post", lw=0.8, label="votes")
    ax.step(t, labels * len(DETECTORS), where="post", color="orange", lw=0.8, label="label")
    ax.axhline(cfg.k - 0.5, color="r", ls="--", lw=0.8, label=f"k={cfg.k}")
    ax.axvspan(0, cfg.train_rows, color="grey", alpha=0.15, label="training prefix")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_xlabel("row")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
