"""Burned-in text scrubbing: which images, the detector, redaction, fixed regions, failures, start-up."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from niffler.common.config import load_config
from niffler.common.deid import DeidSettings, Policy
from niffler.common.errors import ConfigError
from niffler.png_extraction import scrub
from niffler.png_extraction.cli import main
from niffler.png_extraction.config import PngConfig
from niffler.png_extraction.pipeline import Converter, InlineExecutor, run_batch
from niffler.png_extraction.scrub import (
    EngineUnavailable,
    RegionRule,
    ScrubOptions,
    TextDetector,
    at_risk,
    check_engine,
    get_detector,
    parse_region_rules,
    redact,
    scrub_frame,
)

SECRET = "scrub-unit-test-secret-0123456789"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def dataset(modality: str = "US", sop_class: str = UltrasoundImageStorage, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    ds.SOPClassUID = sop_class
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def text_image(text: str = "SMITH^JOHN 00412345", size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A dark frame with one line of white text, as an ultrasound machine draws it."""
    image = Image.new("L", size, 0)
    font = ImageFont.truetype(str(FONT), 16) if FONT.is_file() else ImageFont.load_default(16)
    ImageDraw.Draw(image).text((20, 30), text, fill=255, font=font)
    return np.asarray(image).copy()


def write_instance(path: Path, frames: list[np.ndarray], modality: str = "US", sop_class: str = "") -> Path:
    """Write an 8-bit grey instance of one or more frames."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = sop_class or (UltrasoundMultiFrameImageStorage if len(frames) > 1 else UltrasoundImageStorage)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "0042", "DOE^JANE", modality
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Medical", "Sono 5"
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- which images --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the lower-case 'yes' below, on purpose
@pytest.mark.parametrize(
    ("modality", "sop_class", "burned_in", "expected"),
    [
        ("US", UltrasoundImageStorage, None, True),
        ("US", UltrasoundImageStorage, "NO", True),  # devices say NO and draw names anyway
        ("OT", SecondaryCaptureImageStorage, None, True),
        ("CT", SecondaryCaptureImageStorage, None, True),  # a dose screen: SC with Modality CT
        ("XA", "1.2.840.10008.5.1.4.1.1.12.1", None, True),
        ("ES", "1.2.840.10008.5.1.4.1.1.77.1.1", None, True),
        ("DOC", "1.2.840.10008.5.1.4.1.1.104.1", None, True),
        ("CT", CTImageStorage, None, False),
        ("CT", CTImageStorage, "NO", False),
        ("CT", CTImageStorage, "YES", True),
        ("MR", "1.2.840.10008.5.1.4.1.1.4", None, False),
        ("CR", "1.2.840.10008.5.1.4.1.1.1", None, False),
        ("DX", "1.2.840.10008.5.1.4.1.1.1.1", None, False),
        ("MG", "1.2.840.10008.5.1.4.1.1.1.2", "yes", True),
        ("", "1.2.840.10008.5.1.4.1.1.2", None, True),  # no Modality: unknown means unsafe
    ],
)
def test_auto_scrubs_at_risk_modalities_classes_and_burned_in_yes(
    modality: str, sop_class: str, burned_in: str | None, expected: bool
) -> None:
    ds = dataset(modality, sop_class)
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    assert at_risk(ds) is expected
    assert ScrubOptions("auto").detects(ds) is expected
    assert ScrubOptions("all").detects(ds) is True
    assert ScrubOptions("off").detects(ds) is False


def test_an_unknown_policy_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        ScrubOptions("sometimes")
    with pytest.raises(ConfigError, match=r"ScrubBurnedInText.*'sometimes'"):
        load_config(PngConfig, [], {"ScrubBurnedInText": "sometimes"})
    assert load_config(PngConfig, [], {}).ScrubBurnedInText == "auto"


# --- fixed regions -------------------------------------------------------------------------------


def test_region_rules_match_manufacturer_model_and_size_ignoring_case() -> None:
    (rule,) = parse_region_rules(
        [{"Manufacturer": "acme", "ManufacturerModelName": "SONO", "Rows": 240, "Regions": [[0, 0, 320, 20]]}]
    )
    assert rule == RegionRule("acme", ((0, 0, 320, 20),), "SONO", 240, None)
    matching = dataset(Manufacturer="ACME Medical", ManufacturerModelName="Sono 5", Rows=240, Columns=320)
    assert rule.matches(matching)
    assert not rule.matches(dataset(Manufacturer="Other", ManufacturerModelName="Sono 5", Rows=240))
    assert not rule.matches(dataset(Manufacturer="ACME", ManufacturerModelName="Vivid", Rows=240))
    assert not rule.matches(dataset(Manufacturer="ACME", ManufacturerModelName="Sono 5", Rows=480))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"Regions": [[0, 0, 1, 1]]}], r"PixelRedactionRegions\[0\]: Manufacturer is required"),
        ([{"Manufacturer": "ACME"}], r"PixelRedactionRegions\[0\]: Regions must be"),
        ([{"Manufacturer": "ACME", "Regions": [[0, 0, 0, 5]]}], r"Regions\[0\]: expected \[x, y, width"),
        ([{"Manufacturer": "ACME", "Regions": [[0, 0, 5]]}], r"Regions\[0\]"),
        (
            [{"Manufacturer": "ACME", "Regions": [[0, 0, 5, 5]], "Colour": 1}],
            r"unknown key\(s\) \['Colour'\]",
        ),
        ([{"Manufacturer": "ACME", "Regions": [[0, 0, 5, 5]], "Rows": -3}], r"Rows must be a positive"),
    ],
)
def test_bad_region_rules_stop_the_config_naming_the_item(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(PngConfig, [], {"PixelRedactionRegions": value})


def test_fixed_regions_are_blanked_even_with_detection_off_and_clipped_to_the_image() -> None:
    options = ScrubOptions(
        "off", parse_region_rules([{"Manufacturer": "ACME", "Regions": [[300, 0, 100, 10]]}])
    )
    image = np.full((240, 320), 200, dtype=np.uint16)
    image[100, 100] = 7
    ds = dataset(Manufacturer="ACME Medical")
    assert options.applies(ds) and not options.detects(ds)
    result = scrub_frame(image, ds, options)
    assert result.regions == 1 and result.boxes == [(300, 0, 320, 10)]
    assert (result.image[0:10, 300:320] == 7).all()  # the frame's minimum
    assert (result.image[10:, :] == image[10:, :]).all() and (result.image[:, :300] == image[:, :300]).all()
    assert image[0, 310] == 200  # the original is untouched
    assert not options.applies(dataset(Manufacturer="Other"))


# --- redaction -----------------------------------------------------------------------------------


def test_redaction_fills_grey_with_the_minimum_and_colour_with_black() -> None:
    grey = np.arange(100, dtype=np.uint16).reshape(10, 10) + 50
    out = redact(grey, [(2, 3, 5, 6)])
    assert (out[3:6, 2:5] == 50).all() and out.sum() < grey.sum() and grey[4, 3] != 50
    colour = np.full((10, 10, 3), 90, dtype=np.uint8)
    out = redact(colour, [(0, 0, 4, 4)])
    assert (out[:4, :4] == 0).all() and (out[4:, :] == 90).all()


def test_a_detected_box_grows_by_a_margin_more_at_its_ends() -> None:
    assert scrub._grown((100, 50, 200, 70), 240, 320) == (100 - 12, 50 - 6, 200 + 12, 70 + 6)
    assert scrub._grown((0, 0, 10, 10), 240, 320) == (0, 0, 17, 14)
    assert scrub._grown((400, 0, 500, 10), 240, 320) is None


# --- the detector (the real engine) --------------------------------------------------------------


def test_the_detector_finds_a_line_of_text_and_nothing_in_a_flat_frame() -> None:
    image = text_image()
    boxes = get_detector().find(image)
    assert len(boxes) >= 1
    ink = np.argwhere(image > 64)
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    union = np.zeros(image.shape, dtype=bool)
    for box in boxes:
        grown = scrub._grown(box, *image.shape)
        assert grown is not None
        union[grown[1] : grown[3], grown[0] : grown[2]] = True
    assert union[top:bottom, left:right].all()
    assert get_detector().find(np.zeros((240, 320), dtype=np.uint8)) == []


def test_the_detector_sees_faint_16_bit_text_colour_text_and_survives_tiny_frames() -> None:
    faint = (text_image().astype(np.uint16) * 4).astype(np.uint16)  # 0..1020 of 65535: black on screen
    assert get_detector().find(faint)
    colour = np.zeros((240, 320, 3), dtype=np.uint8)
    colour[..., 0] = text_image()  # red text
    assert get_detector().find(colour)
    for shape in [(1, 500), (3, 3), (2, 2, 3), (40, 1)]:
        assert get_detector().find(np.zeros(shape, dtype=np.uint8)) == []


def test_scrub_frame_blanks_the_text_of_an_at_risk_image_and_leaves_a_ct_alone() -> None:
    image = text_image()
    result = scrub_frame(image, dataset("US"), ScrubOptions("auto"))
    assert result.regions >= 1 and (result.image[image > 64] == 0).all()
    ct = scrub_frame(image, dataset("CT", CTImageStorage), ScrubOptions("auto"))
    assert ct.regions == 0 and ct.image is image


# --- failures and the pipeline -------------------------------------------------------------------


def converter(tmp_path: Path, options: ScrubOptions) -> Converter:
    return Converter(tmp_path / "home", tmp_path / "out", Policy(DeidSettings(), b"k" * 32), scrub=options)


def test_a_missing_model_on_a_worker_is_a_pixel_scrub_error_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scrub, "_DETECTORS", {})
    monkeypatch.setattr(scrub, "_MODEL", "models/no-such-model.onnx")
    write_instance(tmp_path / "home" / "us.dcm", [text_image()])
    conv = converter(tmp_path, ScrubOptions("auto"))
    summary = run_batch(conv, InlineExecutor(), show_progress=False)
    assert summary.failed == {"pixel-scrub-error": 1} and summary.converted == 0
    assert not list((tmp_path / "out").rglob("*.png"))
    with open(tmp_path / "out" / "failures.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["reason"] == "pixel-scrub-error" and "model" in row["error"]
    assert (tmp_path / "out" / "failed-dicom" / "pixel-scrub-error" / "us.dcm").is_file()


class FailsOnSecondFrame:
    def __init__(self) -> None:
        self.calls = 0

    def find(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("onnxruntime: out of memory")
        return [(10, 10, 50, 20)]


def test_a_detector_failing_mid_file_leaves_no_frame_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = FailsOnSecondFrame()
    monkeypatch.setattr(scrub, "get_detector", lambda threads=1: detector)
    write_instance(tmp_path / "home" / "cine.dcm", [text_image()] * 3)
    result = converter(tmp_path, ScrubOptions("auto")).convert("cine.dcm")
    assert result.reason == "pixel-scrub-error" and result.error == "text detection failed (RuntimeError)"
    assert result.cause == "ScrubError" and detector.calls == 2
    assert not list((tmp_path / "out" / "extracted-images").rglob("*.png"))


def test_a_ct_in_auto_never_loads_the_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_detector(threads: int = 1) -> TextDetector:
        raise AssertionError("the detector was loaded for a CT")

    monkeypatch.setattr(scrub, "get_detector", no_detector)
    write_instance(tmp_path / "home" / "ct.dcm", [text_image()], "CT", CTImageStorage)
    result = converter(tmp_path, ScrubOptions("auto")).convert("ct.dcm")
    assert result.ok and result.row is not None and result.row["text_regions_redacted"] is None
    png = np.asarray(Image.open(tmp_path / "out" / result.pngs[0]))
    assert png.max() > 0  # the text is still there: not scrubbed


def test_every_frame_is_scrubbed_and_counted(tmp_path: Path) -> None:
    write_instance(tmp_path / "home" / "cine.dcm", [text_image(), text_image("DOB 1961-03-14")])
    result = converter(tmp_path, ScrubOptions("auto")).convert("cine.dcm")
    assert result.ok and result.row is not None and result.row["text_regions_redacted"] >= 2
    for name in result.pngs:
        assert np.asarray(Image.open(tmp_path / "out" / name)).max() == 0  # only text was bright


# --- start-up ------------------------------------------------------------------------------------


def test_check_engine_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    check_engine()  # installed here
    monkeypatch.setattr(scrub, "ENGINE_PACKAGES", (("no_such_ocr_engine", "rapidocr-onnxruntime"),))
    with pytest.raises(EngineUnavailable, match=r"rapidocr-onnxruntime.*niffler\[ocr\].*off"):
        check_engine()


def test_a_missing_engine_stops_niffler_png_at_start_unless_scrubbing_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIFFLER_DEID_KEY", SECRET)
    monkeypatch.setattr(scrub, "ENGINE_PACKAGES", (("no_such_ocr_engine", "rapidocr-onnxruntime"),))
    write_instance(tmp_path / "home" / "us.dcm", [text_image()])
    args = ["--dicom-home", str(tmp_path / "home"), "--use-processes", "1"]
    result = CliRunner().invoke(main, [*args, "--output-directory", str(tmp_path / "auto")])
    assert result.exit_code == 1, result.output
    assert "ScrubBurnedInText is auto" in result.output and "pip install" in result.output
    assert not (tmp_path / "auto" / "extracted-images").exists()
    off = ["--output-directory", str(tmp_path / "off"), "--scrub-burned-in-text", "off"]
    result = CliRunner().invoke(main, [*args, *off])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "off" / "extracted-images").rglob("*.png"))) == 1
