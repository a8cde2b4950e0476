import numpy as np
import pytest
from PIL import Image

from conftest import make_image, truncate
from geolib.images import ImageError, inspect_image, load_image


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
