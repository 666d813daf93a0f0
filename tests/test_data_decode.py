"""Every image mode becomes RGB with its true value range, upright, or is refused by name.

Each image is built in memory with chosen pixel values; the expected uint8 values are worked out by
hand in the comments, never taken from the code under test.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lm2vision.data import read_dataset
from lm2vision.data.decode import UnsupportedImage, to_rgb
from lm2vision.errors import Lm2vError

ORIENTATION = 0x0112  # the EXIF tag


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _read(tmp_path: Path, blob: bytes, name: str = "x.png", **kw) -> np.ndarray:
    """``blob`` as the only image of class ``a`` in train/ and test/, read back by read_dataset: (H, W, 3)."""
    for split in ("train", "test"):
        p = tmp_path / "ds" / split / "a" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    sets = read_dataset(tmp_path / "ds", **kw)
    return sets["train"].images[0].permute(1, 2, 0).numpy()


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    # 257 * 100 is 100 on the 8-bit scale; the old convert("RGB") clipped everything above 255 to 255
    v = np.array([[0, 257 * 100, 65535, 255, 32896]], dtype=np.uint16)
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    out = _read(tmp_path, _encode(im))
    assert out[..., 0].tolist() == [[0, 100, 255, 0, 128]]  # v >> 8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_big_endian_and_32bit_int_grey():
    v = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), v.astype(">u2").tobytes())
    assert to_rgb(big)[..., 0].tolist() == [[0, 100, 255]]
    as_int = Image.fromarray(v.astype(np.int32))
    assert as_int.mode == "I" and to_rgb(as_int)[..., 2].tolist() == [[0, 100, 255]]
    for bad in (-1, 70000):  # no known scale: refused, and the message says why
        with pytest.raises(UnsupportedImage, match="mode I with values .*outside the 16-bit range"):
            to_rgb(Image.fromarray(np.array([[0, bad]], dtype=np.int32)))


def test_float_grey_in_unit_range_or_refused():
    f = Image.fromarray(np.array([[0.0, 0.2, 1.0]], dtype=np.float32))
    assert f.mode == "F" and to_rgb(f)[..., 1].tolist() == [[0, 51, 255]]  # 0.2 * 255 = 51
    for bad in (1.5, -0.1, np.nan):
        with pytest.raises(UnsupportedImage, match="mode F"):
            to_rgb(Image.fromarray(np.array([[0.0, bad]], dtype=np.float32)))


@pytest.mark.parametrize("orientation,shape,marker", [(1, (2, 3), (0, 0)), (3, (2, 3), (1, 2)),
                                                      (6, (3, 2), (0, 1)), (8, (3, 2), (2, 0))])
def test_exif_orientation_png(tmp_path, orientation, shape, marker):
    # stored 3 wide x 2 tall with a red top-left pixel; 6 = turn 90 degrees clockwise to view, so the
    # marker ends top-right of a 2 x 3 image; 8 = counter-clockwise (bottom-left); 3 = 180 degrees
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    a[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    out = _read(tmp_path, _encode(Image.fromarray(a), exif=exif))
    assert out.shape == (*shape, 3)
    assert out[marker].tolist() == [255, 0, 0] and int(out[..., 0].sum()) == 255


def test_exif_orientation_jpeg(tmp_path):
    # 16 wide x 8 tall, left 8 x 8 block red, right block blue; orientation 6 puts red on top
    a = np.zeros((8, 16, 3), dtype=np.uint8)
    a[:, :8] = (255, 0, 0)
    a[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    out = _read(tmp_path, _encode(Image.fromarray(a), "JPEG", quality=100, exif=exif.tobytes()), "x.jpg")
    assert out.shape == (16, 8, 3)
    top, bottom = out[3, 3].astype(int), out[12, 3].astype(int)
    assert top[0] > 230 and top[2] < 25 and bottom[2] > 230 and bottom[0] < 25


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 0] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    if transparent:
        im.info["transparency"] = 0  # palette entry 0 fully transparent
    return im


def test_palette_png_opaque_and_with_transparency(tmp_path):
    assert _read(tmp_path / "a", _encode(_palette_image(False))).tolist() == [[[10, 20, 30], [200, 100, 0]]]
    # the transparent entry is composited on white; convert("RGB") showed its hidden colour (10, 20, 30)
    assert _read(tmp_path / "b", _encode(_palette_image(True))).tolist() == [[[255, 255, 255], [200, 100, 0]]]


def test_rgba_and_la_are_composited_on_white(tmp_path):
    # alpha 51 = 0.2: (0, 100, 200) -> 0.2 * c + 0.8 * 255 = (204, 224, 244)
    rgba = np.array([[[0, 100, 200, 51], [0, 100, 200, 0], [0, 100, 200, 255]]], dtype=np.uint8)
    out = _read(tmp_path / "a", _encode(Image.fromarray(rgba, "RGBA")))
    assert out.tolist() == [[[204, 224, 244], [255, 255, 255], [0, 100, 200]]]
    la = Image.merge("LA", [Image.fromarray(np.array([[100, 100]], np.uint8)),
                            Image.fromarray(np.array([[51, 255]], np.uint8))])
    out = _read(tmp_path / "b", _encode(la))
    assert out.tolist() == [[[224, 224, 224], [100, 100, 100]]]  # 0.2 * 100 + 204 = 224


def test_cmyk_one_bit_and_grey():
    cmyk = Image.frombytes("CMYK", (4, 1), bytes([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 51]))
    # white; cyan ink = no red; full black; K = 0.2 -> 0.8 * 255 = 204
    assert to_rgb(cmyk).tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [204, 204, 204]]]
    one = Image.frombytes("1", (2, 1), bytes([0b01000000]))
    assert to_rgb(one).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    grey = Image.fromarray(np.array([[7, 250]], dtype=np.uint8))
    assert to_rgb(grey).tolist() == [[[7, 7, 7], [250, 250, 250]]]


def test_mode_without_faithful_conversion_is_refused():
    with pytest.raises(UnsupportedImage, match="mode LAB"):
        to_rgb(Image.new("LAB", (2, 2)))


def test_refused_file_is_named_in_the_warning_or_raises(tmp_path):
    # a float TIFF saved under a .png name: Pillow opens it by content; 300 has no known scale
    blob = _encode(Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32)), "TIFF")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with pytest.raises(Lm2vError, match="no readable images"):
            _read(tmp_path / "a", blob, "f.png")
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1 and "unsupported image files (2): test/a/f.png: mode F" in msgs[0]
    assert "train/a/f.png: mode F with values 0..300, outside 0..1" in msgs[0]
    with pytest.raises(Lm2vError, match="cannot use image file train/a/f.png: mode F"):
        _read(tmp_path / "b", blob, "f.png", on_corrupt="error")
