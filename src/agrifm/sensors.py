"""Sensor registry: band names and order, native resolution, units and default normalisation.

A *source* is one input stream of the model (one patch embedding + encoder). The built-in
sources follow the published AgriFM release; users may register any other source (any
name, any band list), e.g. MOD13Q1 NDVI+EVI or Sentinel-2 without B8A.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from agrifm.errors import InputError, NameNotFoundError

__all__ = ["Source", "register_source", "get_source", "list_sources", "SOURCES"]


@dataclass(frozen=True)
class Source:
    """One sensor stream.

    ``mean``/``std`` are per-band z-score statistics in the source's *units* (what the
    readers return after applying the raster's scale/offset); the model sees
    ``(x - mean) / std``.
    """

    name: str
    bands: tuple[str, ...]
    resolution_m: float
    units: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""
    valid_range: tuple[float, float] | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.bands)
        if len(self.mean) != n or len(self.std) != n:
            raise InputError(
                f"source {self.name!r}: {n} bands but {len(self.mean)} means and {len(self.std)} stds"
            )
        if any(s <= 0 for s in self.std):
            raise InputError(f"source {self.name!r}: std must be positive, got {self.std}")

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("bands", "mean", "std", "aliases"):
            d[k] = list(d[k])
        if d["valid_range"] is not None:
            d["valid_range"] = list(d["valid_range"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Source":
        d = dict(d)
        for k in ("bands", "mean", "std", "aliases"):
            if k in d and d[k] is not None:
                d[k] = tuple(d[k])
        if d.get("valid_range") is not None:
            d["valid_range"] = tuple(d["valid_range"])
        return cls(**d)

    def with_stats(self, mean: list[float], std: list[float]) -> "Source":
        return Source.from_dict({**self.to_dict(), "mean": list(mean), "std": list(std)})


# Published S2 statistics (reflectance x 1e4, band order of the released weights).
_S2_MEAN = (4179.19, 4065.91, 3957.27, 5207.45, 4327.12, 4873.16, 5049.16, 5111.08, 3056.86, 2490.97)
_S2_STD = (4041.52, 3691.00, 3629.33, 2973.52, 3569.73, 3085.92, 2937.56, 2806.04, 1808.30, 1694.20)

SOURCES: dict[str, Source] = {}


def register_source(source: Source, *, overwrite: bool = False) -> Source:
    """Add a source to the registry (``overwrite`` to replace one of the same name)."""
    if source.name in SOURCES and not overwrite and SOURCES[source.name] != source:
        raise InputError(f"source {source.name!r} is already registered; pass overwrite=True")
    SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source:
    """Look a source up by name or alias; unknown names are a clear error."""
    if name in SOURCES:
        return SOURCES[name]
    for s in SOURCES.values():
        if name in s.aliases:
            return s
    raise NameNotFoundError(f"unknown source {name!r}; known sources: {sorted(SOURCES)} (register_source adds one)")


def list_sources() -> list[str]:
    return sorted(SOURCES)


register_source(Source(
    name="S2",
    bands=("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12"),
    resolution_m=10.0,
    units="surface reflectance x 1e4",
    mean=_S2_MEAN,
    std=_S2_STD,
    description="Sentinel-2 L2A, 10 bands in the order of the released AgriFM weights",
    valid_range=(0.0, 20000.0),
    aliases=("Sentinel2", "sentinel-2"),
))
register_source(Source(
    name="HLSL30",
    bands=("BLUE", "GREEN", "RED", "NIR", "SWIR1", "SWIR2"),
    resolution_m=30.0,
    units="surface reflectance x 1e4",
    # The release documents no Landsat statistics; these are typical HLS L30 values.
    mean=(600.0, 850.0, 900.0, 2600.0, 2000.0, 1300.0),
    std=(500.0, 550.0, 700.0, 1100.0, 1000.0, 900.0),
    description="Landsat-8/9 (HLS L30) blue, green, red, NIR, SWIR1, SWIR2",
    valid_range=(0.0, 20000.0),
    aliases=("Landsat", "L30"),
))
register_source(Source(
    name="Modis",
    bands=("B01", "B02", "B03", "B04", "B05", "B06", "B07"),
    resolution_m=500.0,
    units="surface reflectance x 1e4",
    mean=(900.0, 2600.0, 600.0, 900.0, 2700.0, 2000.0, 1200.0),
    std=(800.0, 1000.0, 600.0, 650.0, 1000.0, 900.0, 800.0),
    description="MODIS MOD09 surface reflectance bands 1-7",
    valid_range=(-100.0, 16000.0),
    aliases=("MOD09", "MODIS"),
))
register_source(Source(
    name="MOD13Q1",
    bands=("NDVI", "EVI"),
    resolution_m=231.656,
    units="index (-1..1)",
    mean=(0.60, 0.38),
    std=(0.20, 0.14),
    description="MODIS MOD13Q1 16-day vegetation indices (a user-defined source example)",
    valid_range=(-0.2, 1.0),
))
