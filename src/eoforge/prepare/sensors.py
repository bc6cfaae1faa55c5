"""Sensor presets: band names from file names (STAC eo common names), reflectance scale/offset, quality band.

The tables are the products' documented values (ESA Sentinel-2 L1C/L2A product specification; USGS Landsat
Collection 2 Level-2 science product guide; MODIS MOD09GA and MOD13 (C6.1) user guides). They are small constants, hence written
here rather than pulled from a catalogue package.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from eoforge.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensorBand:
    token: str  # as it appears in file names, e.g. B02, SR_B4, sur_refl_b01
    name: str  # STAC eo common name (or the token for bands without one)
    resolution: float
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None  # the band's fill value where it differs from the sensor's (MOD13Q1 VIs)


@dataclass(frozen=True)
class Sensor:
    name: str
    description: str
    bands: tuple[SensorBand, ...]
    quality: str | None = None  # token of the quality band
    quality_classes: dict[str, int] = field(default_factory=dict)  # named values of a class mask (SCL)
    quality_bits: dict[str, int] = field(default_factory=dict)  # named bits of a QA band
    ignore: tuple[str, ...] = ()  # tokens of other product files that are neither bands nor quality
    nodata: float | None = 0.0  # the product's fill value (S2 JP2 files do not tag it)

    def fill(self, name: str) -> float | None:
        """Fill value of the band with common name (or token) ``name``."""
        for b in self.bands:
            if name in (b.name, b.token):
                return b.nodata if b.nodata is not None else self.nodata
        return self.nodata

    def band(self, token: str) -> SensorBand:
        for b in self.bands:
            if b.token.lower() == token.lower():
                return b
        raise KeyError(token)

    def match(self, path: Path) -> str | None:
        """The band or quality token named in a file name (the longest delimited match), or None."""
        stem = path.name.rsplit(".", 1)[0]
        tokens = [b.token for b in self.bands] + ([self.quality] if self.quality else []) + list(self.ignore)
        hits = [
            t
            for t in tokens
            if re.search(rf"(?:^|[_.\-]){re.escape(t)}(?:[_.\-]|$)", stem, flags=re.IGNORECASE)
        ]
        return max(hits, key=len) if hits else None


_S2_BANDS = (
    ("B01", "coastal", 60),
    ("B02", "blue", 10),
    ("B03", "green", 10),
    ("B04", "red", 10),
    ("B05", "rededge071", 20),
    ("B06", "rededge075", 20),
    ("B07", "rededge078", 20),
    ("B08", "nir", 10),
    ("B8A", "nir08", 20),
    ("B09", "nir09", 60),
    ("B10", "cirrus", 60),
    ("B11", "swir16", 20),
    ("B12", "swir22", 20),
)
SCL_CLASSES = {
    "no_data": 0,
    "saturated_defective": 1,
    "dark_area": 2,
    "cloud_shadow": 3,
    "vegetation": 4,
    "not_vegetated": 5,
    "water": 6,
    "unclassified": 7,
    "cloud_medium": 8,
    "cloud_high": 9,
    "thin_cirrus": 10,
    "snow": 11,
}
_LANDSAT_QA_BITS = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}
_L2_SCALE, _L2_OFFSET = 2.75e-05, -0.2  # USGS C2 L2 surface reflectance
_ST_SCALE, _ST_OFFSET = 0.00341802, 149.0  # USGS C2 L2 surface temperature (kelvin)


def _landsat_bands(reflective: str, thermal: tuple[str, str]) -> tuple[SensorBand, ...]:
    """Collection 2 Level-2 bands at 30 m: ``"TOKEN=name ..."`` reflective bands, the thermal band last."""
    pairs = (item.split("=") for item in reflective.split())
    sr = tuple(SensorBand(t, n, 30, _L2_SCALE, _L2_OFFSET) for t, n in pairs)
    return (*sr, SensorBand(thermal[0], thermal[1], 30, _ST_SCALE, _ST_OFFSET))


SENSORS: dict[str, Sensor] = {
    s.name: s
    for s in (
        Sensor(
            "sentinel2-l1c",
            "Sentinel-2 MSI Level-1C top-of-atmosphere reflectance (B01..B12, DN/10000, -1000 from baseline 04.00)",
            tuple(SensorBand(t, n, r, 1e-4) for t, n, r in _S2_BANDS),
            ignore=("TCI",),
        ),
        Sensor(
            "sentinel2-l2a",
            "Sentinel-2 MSI Level-2A surface reflectance (B01..B12 without B10, DN/10000, -1000 from baseline "
            "04.00), SCL scene classification",
            tuple(SensorBand(t, n, r, 1e-4) for t, n, r in _S2_BANDS if t != "B10"),
            quality="SCL",
            quality_classes=SCL_CLASSES,
            ignore=("TCI", "AOT", "WVP"),
        ),
        Sensor(
            "landsat8-c2l2",
            "Landsat 8/9 OLI/TIRS Collection 2 Level-2 (SR_B1..SR_B7, ST_B10), QA_PIXEL bit flags",
            _landsat_bands(
                "SR_B1=coastal SR_B2=blue SR_B3=green SR_B4=red SR_B5=nir08 SR_B6=swir16 SR_B7=swir22",
                ("ST_B10", "lwir11"),
            ),
            quality="QA_PIXEL",
            quality_bits=_LANDSAT_QA_BITS,
            ignore=(
                "QA_RADSAT",
                "SR_QA_AEROSOL",
                "ST_QA",
                "ST_TRAD",
                "ST_URAD",
                "ST_DRAD",
                "ST_ATRAN",
                "ST_EMIS",
            ),
        ),
        Sensor(
            "landsat7-c2l2",
            "Landsat 7 ETM+ Collection 2 Level-2 (SR_B1..SR_B5, SR_B7, ST_B6), QA_PIXEL bit flags",
            _landsat_bands(
                "SR_B1=blue SR_B2=green SR_B3=red SR_B4=nir08 SR_B5=swir16 SR_B7=swir22",
                ("ST_B6", "lwir"),
            ),
            quality="QA_PIXEL",
            quality_bits={k: v for k, v in _LANDSAT_QA_BITS.items() if k != "cirrus"},
            ignore=("QA_RADSAT", "SR_ATMOS_OPACITY", "SR_CLOUD_QA", "ST_QA", "ST_TRAD", "ST_URAD", "ST_DRAD"),
        ),
        Sensor(
            "modis-mod09ga",
            "MODIS Terra MOD09GA daily surface reflectance (sur_refl_b01..b07, x0.0001), state_1km bit flags",
            (
                SensorBand("sur_refl_b01", "red", 500, 1e-4),
                SensorBand("sur_refl_b02", "nir08", 500, 1e-4),
                SensorBand("sur_refl_b03", "blue", 500, 1e-4),
                SensorBand("sur_refl_b04", "green", 500, 1e-4),
                SensorBand("sur_refl_b05", "nir12", 500, 1e-4),
                SensorBand("sur_refl_b06", "swir16", 500, 1e-4),
                SensorBand("sur_refl_b07", "swir22", 500, 1e-4),
            ),
            nodata=-28672,
            quality="state_1km",
            quality_bits={
                "cloudy": 0,
                "cloud_mixed": 1,
                "cloud_shadow": 2,
                "internal_cloud": 10,
                "snow": 12,
                "adjacent_cloud": 13,
            },
        ),
        Sensor(
            "modis-mod13q1",
            "MODIS Terra MOD13Q1 16-day 250 m vegetation indices (NDVI, EVI x0.0001, fill -3000; red, NIR, blue, "
            "MIR reflectance x0.0001, fill -1000), pixel_reliability classes; GeoTIFF exports named like "
            "AppEEARS' MOD13Q1.061__250m_16_days_NDVI_doy2023001_aid0001.tif",
            (
                SensorBand("NDVI", "NDVI", 250, 1e-4, nodata=-3000),
                SensorBand("EVI", "EVI", 250, 1e-4, nodata=-3000),
                SensorBand("red_reflectance", "red", 250, 1e-4),
                SensorBand("NIR_reflectance", "nir08", 250, 1e-4),
                SensorBand("blue_reflectance", "blue", 250, 1e-4),
                SensorBand("MIR_reflectance", "swir22", 250, 1e-4),
            ),
            nodata=-1000,
            quality="pixel_reliability",
            quality_classes={"fill": -1, "good": 0, "marginal": 1, "snow_ice": 2, "cloudy": 3},
            ignore=(
                "VI_Quality",
                "view_zenith_angle",
                "sun_zenith_angle",
                "relative_azimuth_angle",
                "composite_day_of_the_year",
            ),
        ),
    )
}

_S2_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
S2_OFFSET_BASELINE = (4, 0)


def get_sensor(name: str) -> Sensor:
    if name not in SENSORS:
        raise InputError(f"unknown sensor '{name}' in inputs.sensor; use one of: {', '.join(SENSORS)}")
    return SENSORS[name]


def scale_offset(sensor: Sensor, token: str, path: Path) -> tuple[float, float]:
    """Scale and offset turning a band's digital numbers into reflectance (or kelvin) for this file.

    Sentinel-2 products of processing baseline 04.00 and later store DN = 10000 * reflectance + 1000; the
    baseline is read from the product name in the path (``_N0400_``); when the path does not say, baseline
    04.00 or later is assumed (every product since January 2022 and the reprocessed archive) and logged.
    """
    band = sensor.band(token)
    if not sensor.name.startswith("sentinel2"):
        return band.scale, band.offset
    m = _S2_BASELINE.search(str(path))
    if m is None:
        log.info(
            "%s: no processing baseline in the path (_Nxxxx_); assuming 04.00 or later (offset -1000)", path
        )
        return band.scale, -1000 * band.scale
    baseline = (int(m.group(1)), int(m.group(2)))
    return band.scale, (-1000 * band.scale if baseline >= S2_OFFSET_BASELINE else 0.0)


def quality_values(sensor: Sensor | None, classes: list[int | str] | None) -> list[int]:
    """Class values of a mask given as numbers or the sensor's class names."""
    return [_named(v, sensor.quality_classes if sensor else {}, "classes", sensor) for v in classes or []]


def quality_bits(sensor: Sensor | None, bits: list[int | str] | None) -> list[int]:
    """Bit numbers of a QA mask given as numbers or the sensor's bit names."""
    out = [_named(v, sensor.quality_bits if sensor else {}, "bits", sensor) for v in bits or []]
    for b in out:
        if not 0 <= b < 32:
            raise InputError(f"mask bit {b} is out of range; QA bits are numbered 0..31")
    return out


def _named(v: int | str, names: dict[str, int], kind: str, sensor: Sensor | None) -> int:
    if isinstance(v, int):
        return v
    if v.strip().isdigit():
        return int(v)
    if v in names:
        return names[v]
    valid = ", ".join(names) or "(none: give numbers)"
    where = f"sensor {sensor.name}" if sensor else "no inputs.sensor"
    raise InputError(f"mask {kind} name '{v}' is unknown for {where}; use numbers or one of: {valid}")
