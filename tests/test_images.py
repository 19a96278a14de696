import numpy as np
import pytest
from PIL import Image

from sam_veteran.plugin.agent.images import ImageLoadError, as_rgb, load_image


def test_modes_convert_to_rgb_uint8(tmp_path):
    cases = {
        "gray.png": Image.fromarray(np.full((5, 7), 100, np.uint8)),
        "rgba.png": Image.fromarray(np.full((5, 7, 4), 200, np.uint8)),
        "cmyk.jpg": Image.new("CMYK", (7, 5), (0, 0, 0, 0)),
        "palette.png": Image.new("P", (7, 5), 3),
        "sixteen.png": Image.fromarray(np.full((5, 7), 65535, np.uint16)),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        array = load_image(tmp_path / name)
        assert array.shape == (5, 7, 3) and array.dtype == np.uint8, name
    assert load_image(tmp_path / "sixteen.png").max() == 255
    assert load_image(tmp_path / "cmyk.jpg").min() > 240  # no ink = white


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :5] = 255  # white stripe on the left of the stored pixels
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    array = load_image(tmp_path / "rotated.jpg")
    assert array.shape == (20, 10, 3)
    assert array[:5].mean() > 200 and array[-5:].mean() < 50  # the stripe is now on top


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_files_raise_a_named_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match="bad.png"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_arrays_of_any_dtype_and_channels():
    assert as_rgb(np.zeros((3, 4), np.uint16)).shape == (3, 4, 3)
    assert as_rgb(np.ones((3, 4, 1), np.float32)).max() == 255
    assert as_rgb(np.zeros((3, 4, 4), np.uint8)).shape == (3, 4, 3)
    with pytest.raises(ImageLoadError):
        as_rgb(np.zeros((3, 4, 2)))
    with pytest.raises(ImageLoadError):
        as_rgb(np.zeros((0, 4, 3)))
