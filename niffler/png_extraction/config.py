"""The config of niffler-png: upstream's png-extraction keys, unchanged, plus the pixel and PHI options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niffler.common.config import setting
from niffler.common.deid import DeidSettings
from niffler.common.errors import ConfigError
from niffler.png_extraction.render import VOI_MODES, RenderOptions
from niffler.png_extraction.scrub import SCRUB_POLICIES, ScrubOptions, parse_region_rules

__all__ = ["LEVELS", "PngConfig"]

#: FlattenedToLevel values: how many pseudonymous folder levels PNGs are grouped in.
LEVELS = ("patient", "study", "series")


@dataclass(frozen=True)
class PngConfig(DeidSettings):
    """Settings of a DICOM to PNG batch (upstream key names where upstream had them)."""

    DICOMHome: Path | None = setting(None, "folder of DICOM files to convert (searched at any depth)")
    OutputDirectory: Path = setting(
        Path("niffler-png-output"), "folder for extracted-images/, the CSVs and failed-dicom/"
    )
    Depth: int | None = setting(
        None, "only take files exactly this many folders below DICOMHome; unset: any depth", minimum=0
    )
    SplitIntoChunks: int = setting(
        1, "write the CSVs after each 1/N of the files (a checkpoint; memory is flat anyway)", minimum=1
    )
    PrintImages: bool = setting(True, "write PNGs (false: metadata only)")
    CommonHeadersOnly: bool = setting(False, "keep only metadata columns filled in at least 90% of rows")
    PublicHeadersOnly: bool = setting(True, "drop private tags from metadata.csv")
    SpecificHeadersOnly: bool = setting(False, "keep only the metadata columns FeaturesetFile names")
    FeaturesetFile: Path = setting(
        Path("featuresets/featureset.txt"),
        "featureset for SpecificHeadersOnly (relative: to the config file's folder)",
    )
    UseProcesses: int = setting(0, "worker processes; 0: one per core; 1: in this process", minimum=0)
    FlattenedToLevel: str = setting(
        "patient", "PNG folders: patient, patient/study or patient/study/series", choices=LEVELS
    )
    is16Bit: bool = setting(True, "write 16-bit PNGs (false: 8-bit)")
    VOIMode: str = setting(
        "dataset", "grey mapping: dataset (VOI LUT or window), window, minmax or none", choices=VOI_MODES
    )
    WindowCenter: float | None = setting(None, "window center for VOIMode 'window' (modality units)")
    WindowWidth: float | None = setting(None, "window width for VOIMode 'window' (modality units)")
    ScrubBurnedInText: str = setting(
        "auto",
        "blank text found in the pixels: auto (US, secondary captures, XA, RF, endoscopy, photos, "
        "BurnedInAnnotation YES; not CT, MR, CR, DX, MG), all or off",
        choices=SCRUB_POLICIES,
    )
    PixelRedactionRegions: list[dict[str, Any]] = setting(
        [],
        "rectangles to blank per device: [{Manufacturer, ManufacturerModelName?, Rows?, Columns?, "
        "Regions: [[x, y, width, height], ...]}]",
    )
    StateFolder: Path = setting(
        Path("niffler-png-state"), "folder for the generated de-identification secret (keep it private)"
    )
    SendEmail: bool = setting(False, "e-mail YourEmail when the batch completes")
    YourEmail: str = setting("", "address for the completion e-mail")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.render_options()
        except ValueError as exc:
            raise ConfigError(f"VOIMode/WindowCenter/WindowWidth: {exc}") from None
        try:
            parse_region_rules(self.PixelRedactionRegions)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.SendEmail and "@" not in self.YourEmail:
            raise ConfigError(f"SendEmail is on but YourEmail {self.YourEmail!r} is not an e-mail address")

    def scrub_options(self, threads: int = 1) -> ScrubOptions:
        """Return the burned-in text options these settings describe."""
        return ScrubOptions(self.ScrubBurnedInText, parse_region_rules(self.PixelRedactionRegions), threads)

    def render_options(self) -> RenderOptions:
        """Return the pixel options these settings describe."""
        return RenderOptions(
            bit_depth=16 if self.is16Bit else 8,
            voi=self.VOIMode,
            window_center=self.WindowCenter,
            window_width=self.WindowWidth,
        )
