"""Every kind of image file a user may hand us: converted right, or refused in one line naming the file."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from easy_diffuser.images import ImageError, load_image


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_refuses_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        load_image(path)


def test_refuses_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png: not an image"):
        load_image(path)


def test_refuses_truncated_png(tmp_path):
    data = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(data, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(path)


def test_refuses_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "gone.jpg")


def test_refuses_decompression_bomb(tmp_path):
    path = save(Image.new("1", (12000, 12000)), tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="bomb.png: .*decompression bomb"):
        load_image(path)


def test_sixteen_bit_keeps_its_brightness(tmp_path):
    path = save(Image.new("I;16", (8, 8), 32768), tmp_path / "mid.png")
    pixel = load_image(path).getpixel((0, 0))
    assert pixel == (128, 128, 128)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "red.jpg")
    image = load_image(path)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_palette_transparency_is_flattened_on_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0] * 256)
    path = save(image, tmp_path / "clear.png", transparency=0)
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    red, green, blue = load_image(path).getpixel((4, 4))
    assert red > 200 and blue < 60


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = save(Image.new("RGB", (40, 20), "red"), tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


def test_accepts_bytes_and_pil():
    data = io.BytesIO()
    Image.new("L", (5, 5), 0).save(data, "PNG")
    assert load_image(data.getvalue()).mode == "RGB"
    assert load_image(Image.new("RGBA", (5, 5))).mode == "RGB"
