"""The snapshot protocol shared by edgewatch's plain-numpy models."""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from typing import Any, TypeVar

__all__ = ["SnapshotState"]

M = TypeVar("M", bound="SnapshotState")


class SnapshotState(ABC):
    """A model whose pickle is its compact :meth:`state` (a dict holding ``"params"``).

    Subclasses implement :meth:`state` (constructor arguments under ``"params"``, plus
    the learned arrays) and :meth:`_restore`; pickling, :meth:`from_state` and
    :meth:`state_bytes` follow from those two.
    """

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Compact state: ``{"params": constructor arguments, ...learned values}``."""

    @abstractmethod
    def _restore(self, state: dict[str, Any]) -> None:
        """Load the learned values of :meth:`state` into a freshly constructed model."""

    @classmethod
    def from_state(cls: type[M], state: dict[str, Any]) -> M:
        """The model that :meth:`state` describes."""
        model = cls(*state["params"])
        model._restore(state)
        return model

    def state_bytes(self) -> int:
        """Size of this model pickled: what a snapshot of it costs."""
        return len(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    def __getstate__(self) -> dict[str, Any]:
        return self.state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["params"])  # type: ignore[misc]
        self._restore(state)
