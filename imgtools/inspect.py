"""inspect(): what is in a dataset before presizing it, in parallel on the cluster: counts by format and
mode, sizes (with a histogram PNG), files that fail to decode and why, duplicates by content hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .cluster import where_to_run
from .config import DecodeLimits, LabelSource, PresizeConfig
from .decode import decode
from .errors import DecodeError
from .pictures import save_png
from .sources import list_source, read_bytes

__all__ = ["inspect", "InspectReport", "inspect_files"]


def inspect_files(items: pd.DataFrame, limits: DecodeLimits, storage_options: dict[str, Any] | None) -> pd.DataFrame:
    """One row per file: ``origin``, ``relpath``, ``bytes``, ``sha256``, ``format``, ``mode``, ``width``,
    ``height``, ``error``. Every file is decoded (JPEGs at 1/8 scale, which still reads every coefficient)."""
    rows = []
    got = read_bytes(list(items["origin"]), storage_options)  # a session of its own: nothing stays open
    for origin, relpath, raw in zip(items["origin"], items["relpath"], got):
        row: dict[str, Any] = {"origin": origin, "relpath": relpath, "bytes": -1, "sha256": None, "format": None,
                               "mode": None, "width": -1, "height": -1, "error": None}
        if isinstance(raw, BaseException):
            row["error"] = f"read failed: {type(raw).__name__}: {raw}"
        else:
            row.update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
            try:
                d = decode(raw, limits, lambda w, h: (1, 1))
                row.update(format=d.format, mode=d.mode, width=d.width, height=d.height)
            except DecodeError as exc:
                row["error"] = str(exc)
        rows.append(row)
    return pd.DataFrame(rows, columns=["origin", "relpath", "bytes", "sha256", "format", "mode", "width", "height",
                                       "error"])


@dataclasses.dataclass(frozen=True)
class InspectReport:
    """Per-file facts (``files``) and their summary."""

    source: str
    files: pd.DataFrame

    @property
    def failed(self) -> pd.DataFrame:
        return self.files[self.files["error"].notna()][["relpath", "error"]]

    @property
    def duplicates(self) -> list[list[str]]:
        """Groups of relative paths of decodable images with identical bytes."""
        hashed = self.files[self.files["sha256"].notna() & self.files["error"].isna()]
        return [list(g["relpath"]) for _, g in hashed.groupby("sha256", sort=True) if len(g) > 1]

    def summary(self) -> dict[str, Any]:
        ok = self.files[self.files["error"].isna()]
        pixels = (ok["width"] * ok["height"]).to_numpy()
        return {
            "source": self.source, "files": len(self.files), "ok": len(ok), "failed": len(self.failed),
            "formats": ok["format"].value_counts().sort_index().to_dict(),
            "modes": ok["mode"].value_counts().sort_index().to_dict(),
            "width": _quantiles(ok["width"]), "height": _quantiles(ok["height"]),
            "megapixels": _quantiles(pd.Series(pixels / 1e6)),
            "bytes": int(self.files["bytes"].clip(lower=0).sum()),
            "failures": dict(zip(self.failed["relpath"], self.failed["error"])),
            "duplicates": self.duplicates,
        }

    def __str__(self) -> str:
        s = self.summary()
        lines = [f"{s['files']} files under {s['source']}: {s['ok']} decode, {s['failed']} fail; "
                 f"{s['bytes'] / 1e6:.1f} MB; {len(s['duplicates'])} groups of duplicates"]
        for name in ("formats", "modes"):
            lines.append(f"{name:10s} " + ", ".join(f"{k} {v}" for k, v in s[name].items()))
        for name in ("width", "height", "megapixels"):
            q = s[name]
            lines.append(f"{name:10s} min {q['min']:g}  median {q['median']:g}  p99 {q['p99']:g}  max {q['max']:g}")
        lines += [f"failed     {rel}: {err}" for rel, err in list(s["failures"].items())[:20]]
        lines += [f"duplicate  {' = '.join(group)}" for group in s["duplicates"][:20]]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=1, default=float)

    def histogram(self, out: str | None = None, width: int = 640, height: int = 320) -> Image.Image:
        """A PNG histogram of the images' longest sides (log-spaced bins)."""
        ok = self.files[self.files["error"].isna()]
        sides = np.maximum(ok["width"], ok["height"]).to_numpy()
        low = int(sides.min()) if len(sides) else 1
        edges = np.geomspace(max(1, low), max(low + 1, int(sides.max()) if len(sides) else 2), 25)
        counts, _ = np.histogram(sides, edges)
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        left, bottom, top = 40, height - 30, 20
        bar = (width - left - 10) / len(counts)
        for k, c in enumerate(counts):
            h = 0 if counts.max() == 0 else (bottom - top) * c / counts.max()
            draw.rectangle([left + k * bar, bottom - h, left + (k + 1) * bar - 2, bottom], fill=(60, 110, 180))
        draw.text((left, bottom + 6), f"longest side, px: {edges[0]:.0f} ... {edges[-1]:.0f} (log bins)", fill="black")
        draw.text((4, 4), f"images: {len(sides)}, most in one bin: {counts.max(initial=0)}", fill="black")
        if out is not None:
            save_png(img, out)
        return img


def _quantiles(values: pd.Series) -> dict[str, float]:
    v = values.to_numpy(np.float64)
    if not len(v):
        return {"min": 0.0, "median": 0.0, "p99": 0.0, "max": 0.0}
    return {"min": float(v.min()), "median": float(np.median(v)), "p99": float(np.percentile(v, 99)),
            "max": float(v.max())}


def inspect(source: str, *, config: PresizeConfig | None = None, client: Any = None, scheduler: str | None = None,
            workers: int | None = None, storage_options: dict[str, Any] | None = None,
            partition: int = 256) -> InspectReport:
    """Look at every file of ``source`` (decoding each, JPEGs at 1/8 scale) on the cluster.

    ``client``, ``scheduler`` and ``workers`` choose where, as for :func:`imgtools.presize` (see
    :func:`imgtools.cluster.where_to_run`); ``partition`` files make one task.

    Examples
    --------
    >>> print(imgtools.inspect("photos/"))      # doctest: +SKIP
    """
    config = config or PresizeConfig()
    with where_to_run(client, scheduler, workers) as where:  # a named scheduler is reached before listing
        items = list_source(source, LabelSource.NONE, storage_options).items
        parts = [items.iloc[s : s + partition] for s in range(0, len(items), partition)]
        with where.client(len(parts)) as dask_client:
            if dask_client is None:
                frames = [inspect_files(p, config.limits, storage_options) for p in parts]
            else:
                import dask.bag as db

                bag = db.from_sequence(parts, npartitions=len(parts)).map(inspect_files, config.limits, storage_options)
                frames = dask_client.compute(bag, sync=True)
    return InspectReport(source=str(source), files=pd.concat(frames, ignore_index=True))
