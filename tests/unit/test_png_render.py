"""Pixel pipeline on known arrays: every expected value here is worked out by hand."""

from __future__ import annotations

import io

import numpy as np
import png
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from niffler.png_extraction.render import (
    RenderOptions,
    UnsupportedImage,
    encode_png,
    min_max,
    modality_lut,
    render_frame,
    to_depth,
    voi,
    window,
)


def grey(photometric: str = "MONOCHROME2", bits: int = 12, signed: int = 0, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.PixelRepresentation = signed
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_rescale_gives_modality_values() -> None:
    ds = grey(RescaleSlope="2", RescaleIntercept="-1024")
    assert modality_lut(np.array([[0, 512, 1024]], np.uint16), ds).tolist() == [[-1024, 0, 1024]]


def test_linear_window_matches_ps33_c11_2_1_2() -> None:
    # c=40, w=400: 0 at or below -160, 1 above 239, 0.5 at 39.5.
    values = np.array([-1000, -160, 39.5, 239, 240])
    out = window(values, 40, 400)
    assert out[0] == 0 and out[1] == 0 and out[4] == 1
    assert out[2] == pytest.approx(0.5)
    assert out[3] == pytest.approx(1.0)


def test_linear_exact_and_sigmoid() -> None:
    assert window(np.array([-160.0, 40.0, 240.0]), 40, 400, "LINEAR_EXACT").tolist() == [0.0, 0.5, 1.0]
    sig = window(np.array([40.0, 140.0]), 40, 400, "SIGMOID")
    assert sig[0] == pytest.approx(0.5)
    assert sig[1] == pytest.approx(1 / (1 + np.exp(-1)))


def test_constant_image_is_black_not_nan() -> None:
    assert min_max(np.full((4, 4), 7.0)).tolist() == [[0.0] * 4] * 4
    image = render_frame(np.full((4, 4), 100, np.uint16), grey(), RenderOptions(voi="minmax"))
    assert image.dtype == np.uint8 and not image.any()
    assert png.Reader(bytes=encode_png(image)).read()[0] == 4


def test_depth_scaling_rounds() -> None:
    assert to_depth(np.array([0.0, 0.5, 1.0, np.nan]), 16).tolist() == [0, 32768, 65535, 0]
    assert to_depth(np.array([0.0, 0.5, 1.0]), 8).tolist() == [0, 128, 255]


def test_monochrome1_is_inverted() -> None:
    pixels = np.array([[0, 4095]], np.uint16)
    assert render_frame(pixels, grey("MONOCHROME1"), RenderOptions(voi="minmax")).tolist() == [[255, 0]]
    assert render_frame(pixels, grey("MONOCHROME2"), RenderOptions(voi="minmax")).tolist() == [[0, 255]]


def test_dataset_window_is_the_default() -> None:
    ds = grey(RescaleSlope="1", RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")
    # stored 864 -> -160 HU (black); 1064 -> 40 HU (mid grey); 1264 -> 240 HU (white)
    out = render_frame(np.array([[864, 1064, 1264]], np.uint16), ds, RenderOptions())
    assert out.tolist() == [[0, 128, 255]]


def test_explicit_window_and_none() -> None:
    ds = grey(RescaleSlope="1", RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")
    # c=1000, w=201: black at or below 899.5 HU, white above 1099.5 HU
    explicit = RenderOptions(voi="window", window_center=1000, window_width=201)
    assert render_frame(np.array([[1923, 2024, 2124]], np.uint16), ds, explicit).tolist() == [[0, 128, 255]]
    # none: the 12-bit stored range -1024..3071 HU maps to 0..65535
    full = RenderOptions(voi="none", bit_depth=16)
    assert render_frame(np.array([[0, 4095, 2048]], np.uint16), ds, full).tolist() == [
        [0, 65535, round(2048 / 4095 * 65535)]
    ]


def test_voi_lut_sequence() -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]  # 4 entries, first input 10, 8-bit output
    item.LUTData = [0, 51, 204, 255]
    ds = grey()
    ds.VOILUTSequence = [item]
    out = voi(np.array([5.0, 10, 11, 12, 13, 99]), ds, RenderOptions())
    assert out.tolist() == pytest.approx([0, 0, 0.2, 0.8, 1, 1])


def test_palette_colour_through_its_tables() -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.PixelRepresentation = 0
    for colour, table in (("Red", [0, 65535]), ("Green", [65535, 0]), ("Blue", [0, 32768])):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [2, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(table, "<u2").tobytes())
    out = render_frame(np.array([[0, 1]], np.uint8), ds, RenderOptions(bit_depth=16))
    assert out.tolist() == [[[0, 65535, 0], [65535, 0, 32768]]]
    out8 = render_frame(np.array([[0, 1]], np.uint8), ds, RenderOptions(bit_depth=8))
    assert out8.tolist() == [[[0, 255, 0], [255, 0, 128]]]


def test_palette_colour_without_its_tables_is_unsupported() -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.SamplesPerPixel = 1
    with pytest.raises(UnsupportedImage, match="PALETTE COLOR without its lookup tables"):
        render_frame(np.array([[0, 1]], np.uint8), ds, RenderOptions())
    ds.RedPaletteColorLookupTableDescriptor = [2, 0, 16]  # a descriptor, no data
    ds.RedPaletteColorLookupTableData = np.array([0, 1], "<u2").tobytes()
    with pytest.raises(UnsupportedImage, match="without its lookup tables"):
        render_frame(np.array([[0, 1]], np.uint8), ds, RenderOptions())


def test_a_ds_with_an_empty_first_value_counts_as_absent() -> None:
    """pydicom reads ``\\40`` as ['', 40]: no rescale, no window (min-max), never float('')."""
    pixels = np.array([[0, 100]], np.uint16)
    windowed = render_frame(pixels, grey(WindowCenter="40", WindowWidth="400"), RenderOptions())
    assert windowed.tolist() == [[102, 166]]  # 0 -> 0.401, 100 -> 0.652 of 255
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        ds = grey(WindowCenter="40", WindowWidth="400")
        setattr(ds, keyword, ["", "40"])
        assert render_frame(pixels, ds, RenderOptions()).tolist() == [[102, 166]], keyword
    for center, width in ((["", "40"], "400"), ("40", ["", "400"])):
        ds = grey(WindowCenter=center, WindowWidth=width)
        assert render_frame(pixels, ds, RenderOptions()).tolist() == [[0, 255]], (center, width)
    # A functional group's window without a center: the top-level window applies.
    group = Dataset()
    group.FrameVOILUTSequence = [Dataset()]
    group.FrameVOILUTSequence[0].WindowCenter = ["", "500"]
    group.FrameVOILUTSequence[0].WindowWidth = "100"
    ds = grey(WindowCenter="40", WindowWidth="400")
    ds.SharedFunctionalGroupsSequence = [group]
    assert render_frame(pixels, ds, RenderOptions()).tolist() == [[102, 166]]


def test_rgb_passes_through_and_scales() -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    ds.BitsStored = 8
    pixels = np.array([[[1, 2, 3], [255, 0, 128]]], np.uint8)
    assert render_frame(pixels, ds, RenderOptions(bit_depth=8)).tolist() == pixels.tolist()
    assert (
        render_frame(pixels, ds, RenderOptions(bit_depth=16)).tolist() == (pixels.astype(int) * 257).tolist()
    )


@pytest.mark.parametrize(
    "photometric,samples,shape", [("CMYK", 4, (2, 2, 4)), ("RGB", 3, (2, 2)), ("HSV", 3, (2, 2, 3))]
)
def test_unsupported_photometric_is_named(photometric: str, samples: int, shape: tuple[int, ...]) -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = samples
    with pytest.raises(UnsupportedImage, match=photometric):
        render_frame(np.zeros(shape, np.uint8), ds, RenderOptions())


@pytest.mark.parametrize(
    "dtype,shape", [(np.uint8, (3, 5)), (np.uint16, (3, 5)), (np.uint8, (3, 5, 3)), (np.uint16, (2, 4, 3))]
)
def test_png_encoder_round_trips_through_pypng_and_pillow(dtype: type, shape: tuple[int, ...]) -> None:
    top = np.iinfo(dtype).max
    image = np.random.default_rng(1).integers(0, top, size=shape, endpoint=True).astype(dtype)
    data = encode_png(image)
    width, height, rows, info = png.Reader(bytes=data).read()
    decoded = np.array(list(rows)).reshape(shape)
    assert (width, height, info["bitdepth"]) == (shape[1], shape[0], 8 * np.dtype(dtype).itemsize)
    assert np.array_equal(decoded, image)
    if dtype == np.uint8 or len(shape) == 2:
        assert np.array_equal(np.array(Image.open(io.BytesIO(data))), image)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="bit depth"):
        RenderOptions(bit_depth=12)
    with pytest.raises(ValueError, match="VOI mode"):
        RenderOptions(voi="auto")
    with pytest.raises(ValueError, match="center and a width"):
        RenderOptions(voi="window", window_center=40)


@pytest.mark.parametrize("voi_mode", ["dataset", "minmax", "none", "window"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("signed,slope", [(0, "1"), (1, "0.5"), (1, "-2")])
def test_lookup_table_path_equals_per_pixel_path(
    voi_mode: str, photometric: str, signed: int, slope: str
) -> None:
    from niffler.png_extraction import render

    rng = np.random.default_rng(7)
    dtype = np.int16 if signed else np.uint16
    pixels = rng.integers(-2048 if signed else 0, 2047, size=(64, 64)).astype(dtype)
    ds = grey(photometric, signed=signed, RescaleSlope=slope, RescaleIntercept="-100",
              WindowCenter=["30", "300"], WindowWidth=["350", "1500"])  # fmt: skip
    options = RenderOptions(voi=voi_mode, bit_depth=16, window_center=-50, window_width=700)
    assert render._lut_applies(pixels, ds)
    fast = render_frame(pixels, ds, options)
    slow = render._grey(pixels, ds, options, 0, photometric)
    assert fast.dtype == slow.dtype and np.array_equal(fast, slow)
