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


# --- Files that used to break: each gives the right picture or one line naming the file --------

import os  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def one_line(error: pytest.ExceptionInfo, name: str) -> str:
    message = str(error.value)
    assert "\n" not in message and name in message
    return message


def test_multi_page_tiff_uses_the_first_page(tmp_path):
    """Pillow 9.5 (the webui's) raised AttributeError in exif_transpose for these."""
    pages = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "green")]
    path = tmp_path / "scan.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert load_image(path).getpixel((4, 4)) == (255, 0, 0)


def test_multi_page_tiff_with_exif_orientation_is_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    pages = [Image.new("RGB", (40, 20), colour) for colour in ("red", "blue")]
    path = tmp_path / "rotated.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:], exif=exif)
    assert load_image(path).size == (20, 40)


@pytest.mark.parametrize("mode, byte_order", [("I;16B", ">u2"), ("I;16", "<u2")])
def test_sixteen_bit_tiff_in_either_byte_order_keeps_its_brightness(tmp_path, mode, byte_order):
    values = np.full((6, 6), 32768, dtype=byte_order)
    values[0, 0] = 65535
    path = tmp_path / "deep.tif"
    Image.frombuffer(mode, (6, 6), values.tobytes(), "raw", mode, 0, 1).save(path)
    image = load_image(path)
    assert image.getpixel((3, 3)) == (128, 128, 128) and image.getpixel((0, 0)) == (255, 255, 255)


def test_float_tiff_in_zero_to_one_is_scaled(tmp_path):
    path = save(Image.new("F", (4, 4), 0.5), tmp_path / "float.tif")
    assert load_image(path).getpixel((1, 1)) == (127, 127, 127)


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_empty_pil_image_is_refused(size):
    with pytest.raises(ImageError, match=rf"image: {size[0]}x{size[1]} pixels: the image is empty"):
        load_image(Image.new("RGB", size))


def test_nul_in_the_path_is_an_image_error(tmp_path):
    with pytest.raises(ImageError) as error:
        load_image(str(tmp_path / "a\0b.png"))
    assert one_line(error, "a\\x00b.png").endswith("contains a NUL character)")


def test_newline_in_a_file_name_keeps_the_message_on_one_line(tmp_path):
    path = tmp_path / "two\nlines.png"
    path.write_text("not an image")
    with pytest.raises(ImageError) as error:
        load_image(path)
    one_line(error, "two\\nlines.png")


def test_folder_named_like_an_image_is_refused(tmp_path):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="folder.png: is a folder"):
        load_image(tmp_path / "folder.png")


def run_with_deadline(function, seconds: float = 20):
    """Run `function` on a thread; fail (instead of hanging the suite) if it does not return in time."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked: a FIFO must not be read"
    return outcome


def test_fifo_named_png_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = run_with_deadline(lambda: load_image(fifo))
    assert isinstance(outcome.get("error"), ImageError)
    assert str(outcome["error"]) == f"{fifo}: not a regular file (a FIFO, device or socket)"


def test_fifo_named_png_on_the_command_line_fails_in_one_line(tmp_path, shapes_engine, monkeypatch, capsys):
    from easy_diffuser import cli

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(cli, "Engine", lambda *args, **kwargs: shapes_engine)
    outcome = run_with_deadline(lambda: cli.main([str(fifo), "--model", "shapes-demo"]))
    assert outcome.get("value") == cli.EXIT_IMAGE_FAILED
    assert capsys.readouterr().err.strip() == f"error: {fifo}: not a regular file (a FIFO, device or socket)"


@pytest.mark.parametrize("name, data", [("upload.eps", EPS), ("upload.png", EPS), ("doc.pdf", PDF), ("doc.png", PDF)])
def test_postscript_and_pdf_are_never_handed_to_ghostscript(tmp_path, monkeypatch, name, data):
    import subprocess

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    for function in ("Popen", "check_call", "run", "call"):
        monkeypatch.setattr(subprocess, function, no_process)
    path = tmp_path / name
    path.write_bytes(data)
    for source in (path, data):
        with pytest.raises(ImageError) as error:
            load_image(source)
        assert "not an image file PIL can read (supported: PNG, JPEG" in one_line(error, "")


def test_an_already_opened_eps_image_is_refused_before_it_is_rendered(monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: pytest.fail("Ghostscript was run"))
    opened = Image.open(io.BytesIO(EPS))  # lazy: Pillow renders (runs gs) only on load
    assert opened.format == "EPS"
    with pytest.raises(ImageError, match="image: EPS images are not opened"):
        load_image(opened)


@pytest.mark.parametrize(
    "failure", [RuntimeError("decoder bug"), IndexError("tile"), ZeroDivisionError("scale"), MemoryError()]
)
def test_any_decoder_failure_is_an_image_error_naming_the_file(tmp_path, monkeypatch, failure):
    path = save(Image.new("RGB", (8, 8), "red"), tmp_path / "fine.png")

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(Image.Image, "convert", broken)
    with pytest.raises(ImageError) as error:
        load_image(path)
    one_line(error, str(path))


def test_ctrl_c_is_not_turned_into_an_image_error(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (8, 8), "red"), tmp_path / "fine.png")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image(path)


def test_phone_mpo_jpeg_is_still_read(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    path = tmp_path / "phone.jpg"
    frames[0].save(path, "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(path).format == "MPO"
    red, green, blue = load_image(path).getpixel((4, 4))
    assert red > 200 and blue < 60
