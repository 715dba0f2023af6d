"""The output schema: what writers and readers of an output agree on, in one place.

- :class:`Status`: a manifest row's ``status`` (``ok`` | ``failed`` | ``skipped``).
- :data:`MANIFEST_COLUMNS`: the manifest's columns, in order.
- :func:`coordinate_column` / :func:`parse_coordinate_column`: the columns that carry points and boxes moved
  to one size (``points_64x64``), built and parsed by the same pair of functions.
- :class:`OutputInfo`: the ``imgtools`` attributes of a finished output (version, config, sizes, labels, ...),
  written last by presize and derive, read by ``open``, ``derive`` and ``detect``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Status", "MANIFEST_COLUMNS", "COORDINATE_KINDS", "ATTRS_KEY", "OutputInfo", "ok_mask", "final_mask",
           "coordinate_column", "parse_coordinate_column", "ManifestTally"]


class Status(str, enum.Enum):
    """A manifest row's outcome: ``skipped`` rows fall outside the write-time filters (``min_side``,
    ``max_aspect``); like failed rows they are not ok (no pixels), but they are final and counted apart."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


#: The manifest's columns, in order (row i is input i and array row i).
MANIFEST_COLUMNS = ("index", "origin", "relpath", "label", "label_id", "status", "error", "height", "width", "mode")
#: Kinds of coordinates a manifest may carry beside its images, moved with each image's geometry.
COORDINATE_KINDS = ("points", "boxes")
#: The key of imgtools' attributes in an output's attributes (the zarr group's, or ``imgtools.json``).
ATTRS_KEY = "imgtools"


def ok_mask(rows: pd.DataFrame) -> np.ndarray:
    """Which manifest rows are ok, as a bool array.

    Examples
    --------
    >>> ok_mask(pd.DataFrame({"status": ["ok", "failed"]})).tolist()
    [True, False]
    """
    return (rows["status"] == Status.OK.value).to_numpy()


def final_mask(rows: pd.DataFrame) -> np.ndarray:
    """Which manifest rows a resumed run keeps as they are (ok or skipped; failed ones may be tried again),
    as a bool array.

    Examples
    --------
    >>> final_mask(pd.DataFrame({"status": ["ok", "failed", "skipped"]})).tolist()
    [True, False, True]
    """
    return rows["status"].isin([Status.OK.value, Status.SKIPPED.value]).to_numpy()


class ManifestTally:
    """What a manifest holds, counted as its rows go by part after part (:meth:`count`): ``ok`` and
    ``labels`` of every row (5 bytes a row), the ``failed`` rows (``index``, ``origin``, ``error``), the
    number ``skipped`` (outside the filters: neither ok nor in ``failed``), and a check that the rows come in
    index order, each once. A tally may begin at row ``start`` (one part of a manifest, counted where it is
    written); :meth:`extend` appends the tally of the rows that come next.

    Examples
    --------
    >>> tally = ManifestTally()
    >>> parts = [pd.DataFrame({"index": [0, 1, 2], "origin": ["a", "b", "c"], "status": ["ok", "failed", "skipped"],
    ...                        "error": [None, "bad", "small"], "label_id": [0, 1, 1]})]
    >>> _ = list(tally.count(parts))
    >>> tally.rows, tally.ok.tolist(), tally.failed["error"].tolist(), tally.skipped
    (3, [True, False, False], ['bad'], 1)
    """

    def __init__(self, start: int = 0, per_row: bool = True) -> None:
        #: the index of the first row counted
        self.start = start
        #: whether ``ok`` and ``labels`` are kept (5 bytes a row; an output that writes them with its chunks
        #: does not need them at the end, and a client of 100M rows is then 500 MB smaller)
        self.per_row = per_row
        #: rows counted
        self.rows = 0
        #: rows outside the write-time filters (counted, not kept: a filter may skip most of a dataset)
        self.skipped = 0
        self._ok: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._failed: list[pd.DataFrame] = []

    def count(self, parts: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """Each part as it is, counted on the way.

        Raises
        ------
        RuntimeError
            A part's rows do not carry on the index where the part before stopped.
        """
        for rows in parts:
            index = rows["index"].to_numpy()
            at = self.start + self.rows
            if not np.array_equal(index, np.arange(at, at + len(rows))):
                raise RuntimeError(f"internal error: manifest rows from {index[:1].tolist()} where {at} comes next")
            ok = ok_mask(rows)
            if self.per_row:
                self._ok.append(ok)
                self._labels.append(rows["label_id"].to_numpy(np.int32))
            if not ok.all():
                skipped = (rows["status"] == Status.SKIPPED.value).to_numpy()
                self.skipped += int(skipped.sum())
                failed = ~ok & ~skipped
                if failed.any():
                    self._failed.append(rows.loc[failed, ["index", "origin", "error"]])
            self.rows += len(rows)
            yield rows

    def extend(self, other: ManifestTally) -> None:
        """Add the tally of the rows that come next (a part of the manifest counted elsewhere).

        Raises
        ------
        RuntimeError
            ``other`` does not begin where this tally stops.

        Examples
        --------
        >>> head, tail = ManifestTally(), ManifestTally(start=1)
        >>> _ = list(head.count([pd.DataFrame({"index": [0], "origin": ["a"], "status": ["ok"], "error": [None],
        ...                                    "label_id": [0]})]))
        >>> _ = list(tail.count([pd.DataFrame({"index": [1], "origin": ["b"], "status": ["failed"], "error": ["bad"],
        ...                                    "label_id": [1]})]))
        >>> head.extend(tail); head.rows, head.ok.tolist(), head.failed["origin"].tolist()
        (2, [True, False], ['b'])
        """
        at = self.start + self.rows
        if other.start != at:
            raise RuntimeError(f"internal error: manifest rows from {other.start} where {at} comes next")
        if self.per_row and not other.per_row:
            raise RuntimeError("internal error: a tally per row extended by one without its rows")
        self._ok += other._ok
        self._labels += other._labels
        self._failed += other._failed
        self.rows += other.rows
        self.skipped += other.skipped

    @property
    def ok(self) -> np.ndarray:
        self._check_per_row()
        return np.concatenate(self._ok) if self._ok else np.zeros(0, bool)

    @property
    def labels(self) -> np.ndarray:
        self._check_per_row()
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.int32)

    def _check_per_row(self) -> None:
        if not self.per_row:
            raise RuntimeError("internal error: this tally keeps no row's ok and label (per_row=False)")

    @property
    def failed(self) -> pd.DataFrame:
        if not self._failed:
            return pd.DataFrame({"index": pd.Series([], dtype="int64"), "origin": pd.Series([], dtype="string"),
                                 "error": pd.Series([], dtype="string")})
        return pd.concat(self._failed, ignore_index=True)


def coordinate_column(kind: str, size_key: str) -> str:
    """The column of ``kind`` coordinates moved to size ``size_key``.

    Examples
    --------
    >>> coordinate_column("points", "64x64")
    'points_64x64'
    """
    return f"{kind}_{size_key}"


def parse_coordinate_column(column: str) -> tuple[str, str] | None:
    """``(kind, size_key)`` of a column made by :func:`coordinate_column`, or None for any other column.

    Examples
    --------
    >>> parse_coordinate_column("boxes_short160"), parse_coordinate_column("label_id")
    (('boxes', 'short160'), None)
    """
    kind, sep, key = column.partition("_")
    return (kind, key) if sep and key and kind in COORDINATE_KINDS else None


@dataclasses.dataclass(frozen=True)
class OutputInfo:
    """The ``imgtools`` attributes of a finished output.

    Examples
    --------
    >>> info = OutputInfo(version="1", config={}, n=2, label_names=["a"], source="s", sizes=["64x64"])
    >>> OutputInfo.from_attrs(info.to_attrs()) == info
    True
    """

    version: str
    config: dict[str, Any]
    n: int
    label_names: list[str]
    source: str
    sizes: list[str]
    #: sizes added by ``imgtools derive``: size key -> how it was made
    derived: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_attrs(self) -> dict[str, Any]:
        """The attributes to write (``derived`` only when there is something in it)."""
        info = dataclasses.asdict(self)
        if not info["derived"]:
            del info["derived"]
        return {ATTRS_KEY: info}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any] | None) -> OutputInfo | None:
        """The info in an output's attributes, or None when they hold none."""
        info = (attrs or {}).get(ATTRS_KEY)
        if not isinstance(info, dict):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in info.items() if k in names})
