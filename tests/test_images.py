import numpy as np
import pytest
from PIL import Image

from conftest import bmp_header, make_image, png_header, truncate
from geolib.data.images import ImageError, inspect_image, load_image


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16"])
def test_odd_modes_become_8bit_rgb(tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = make_image(tmp_path / f"x{suffix}", mode=mode)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (24, 20)
    error, note = inspect_image(path)
    assert error is None and "converted" in note


def test_sixteen_bit_keeps_its_contrast(tmp_path):
    arr = np.zeros((8, 8), dtype=np.uint16)
    arr[:, 4:] = 65535
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = np.asarray(load_image(tmp_path / "d.png"))
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 30)
    assert "EXIF" in inspect_image(tmp_path / "r.jpg")[1]


def test_truncated_and_non_images_name_the_file(tmp_path):
    cut = truncate(make_image(tmp_path / "cut.jpg", size=(64, 64)))
    with pytest.raises(ImageError, match="cut.jpg.*truncated"):
        load_image(cut)
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(ImageError, match="fake.png"):
        load_image(tmp_path / "fake.png")


def test_an_oversized_png_is_refused_from_its_header(tmp_path):
    """13,500² is past Pillow's DecompressionBombError (179 MP): the library's own error comes first."""
    import geolib.data.images as images

    big = tmp_path / "pano.png"
    big.write_bytes(png_header(13500, 13500))
    with pytest.raises(ImageError, match=r"pano.png: 13500×13500 pixels is too large \(limit 80,000,000 "
                                         r"pixels\); downscale the image"):
        load_image(big)
    error, note = inspect_image(big)
    assert "too large" in error and note is None
    assert images.header_size(big) == (13500, 13500)


def test_pillows_bomb_error_and_warning_become_image_errors(tmp_path):
    """A format without a header parser here (BMP) still meets the one limit, and no warning leaks."""
    import warnings

    for (w, h), what in (((10000, 9500), "warning zone"), ((20000, 10000), "error zone")):
        path = tmp_path / f"scan-{w}.bmp"
        path.write_bytes(bmp_header(w, h))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ImageError, match=f"scan-{w}.bmp: {w * h:,} pixels is too large"):
                load_image(path)


def test_the_size_limit_is_one_constant(tmp_path, monkeypatch):
    import geolib.data.images as images
    from geolib.retrieval import localize as localization

    assert not hasattr(localization, "MAX_UPLOAD_PIXELS")
    monkeypatch.setattr(images, "MAX_PIXELS", 24 * 20 - 1)
    path = make_image(tmp_path / "a.jpg")
    with pytest.raises(ImageError, match="24×20 pixels is too large"):
        load_image(path)
    with pytest.raises(ImageError, match="24×20 pixels is too large"):
        localization.decode_upload(path.read_bytes(), "a.jpg")


def test_header_size_agrees_with_pillow(tmp_path):
    from geolib.data.images import header_size

    img = Image.new("RGB", (321, 123), "blue")
    exif = img.getexif()
    exif[0x010E] = "x" * 5000  # a long EXIF segment before the frame header
    img.save(tmp_path / "p.jpg", progressive=True, exif=exif, icc_profile=b"\0" * 70000)
    Image.new("P", (17, 9)).save(tmp_path / "p.png")
    Image.new("RGB", (5, 6)).save(tmp_path / "p.gif")
    assert header_size(tmp_path / "p.jpg") == (321, 123) == Image.open(tmp_path / "p.jpg").size
    assert header_size((tmp_path / "p.png").read_bytes()) == (17, 9)
    assert header_size(tmp_path / "p.gif") is None  # other formats: Pillow reads the size
    assert load_image(tmp_path / "p.gif").size == (5, 6)


def test_a_folder_named_like_an_image_says_it_is_a_folder(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ImageError, match="x.jpg: is a folder"):
        load_image(tmp_path / "x.jpg")


def test_imagenet_statistics_are_timms():
    """The one mean/std pair must be the one timm's pretrained backbones expect."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from geolib.data.images import IMAGENET_MEAN, IMAGENET_STD

    assert IMAGENET_MEAN == pytest.approx(IMAGENET_DEFAULT_MEAN) and IMAGENET_STD == pytest.approx(IMAGENET_DEFAULT_STD)
