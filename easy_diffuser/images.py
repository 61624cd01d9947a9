"""Step 1 of the data flow: any image a user has -> a clean RGB PIL image.

Everything that can go wrong with a user's file is turned into an ImageError whose
message names the file and the cause, so callers can report it in one line.
Only raster formats that Pillow decodes itself are opened: EPS, PostScript and PDF
would make Pillow run Ghostscript on the file.
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .files import NotARegularFile, read_regular_file

ImageInput = Union[str, os.PathLike, bytes, Image.Image]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow's names of the formats behind those suffixes; its JPEG reader also opens MPO (phones' multi-picture JPEGs).
RASTER_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
OPENED_FORMATS = (*RASTER_FORMATS, "MPO")
# PIL's own decompression-bomb limit (about 89 megapixels): CLIP sees a few hundred
# pixels, so anything larger is a mistake or an attack, and would cost gigabytes to decode.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# EXIF orientation -> the transpose that shows the picture upright.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
# The thinnest shape a model is shown whole (see bounded): wider than phone panoramas (about 5:1).
MAX_ASPECT = 8
# Where a flattened image keeps the RGBA picture it was made from (with_alpha): PIL's info travels with the image
# through every surface, pickling (Ray) included, and is never written into a saved file.
TRANSPARENT = "easy_diffuser.rgba"


class ImageError(ValueError):
    """A user's image that cannot be used; the message is ready to show."""


def load_image(image: ImageInput, name: str | None = None, min_side: int | None = None) -> Image.Image:
    """Open a path, bytes or PIL image and return it as an upright RGB image.

    With `min_side`, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay at least
    `min_side` (libjpeg's DCT scaling): a model that sees 224 pixels needn't decode 4,000, and decoding
    is then several times faster."""
    label = _printable(name or _describe(image))
    try:
        if isinstance(image, Image.Image):
            if image.format and image.format not in OPENED_FORMATS:
                raise ImageError(f"{label}: {image.format} images are not opened; use {', '.join(RASTER_FORMATS)}")
            _check_size(image, label)
            return _to_rgb(image, _orientation(image))
        return _decode(_read_bytes(image, label), label, min_side)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: image is too large to be a real picture (decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file PIL can read (supported: {', '.join(RASTER_FORMATS)})") from None
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label}: broken or truncated image ({_printable(str(error))})") from None
    except Exception as error:  # a decoder's own bug is still this file's problem, not the caller's (Ctrl-C passes)
        raise ImageError(f"{label}: cannot decode image ({type(error).__name__}: {_printable(str(error))})") from None


def _decode(data: bytes, label: str, min_side: int | None = None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        opened = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)  # opened on the first frame
        _check_size(opened, label)
        if min_side and opened.format == "JPEG":
            opened.draft("RGB", (min_side, min_side))
        opened.load()
    # Read after load(): Pillow turns TIFFs upright itself while loading them (and Pillow 9.5 cannot read a
    # multi-page TIFF's EXIF any more then, which _orientation takes as upright).
    return _to_rgb(opened, _orientation(opened))


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return "image" if isinstance(image, Image.Image) else "uploaded image"


def _printable(text: str) -> str:
    """Control characters (a NUL or newline in a file name) escaped, so the message stays one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], text)


def _read_bytes(image: ImageInput, label: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        try:
            data = read_regular_file(image)
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except NotARegularFile as error:
            raise ImageError(
                f"{label}: {'is a folder, not an image' if error.errno == errno.EISDIR else error.strerror}"
            ) from None
        except OSError as error:
            raise ImageError(f"{label}: cannot read ({error.strerror or error})") from None
        except ValueError:  # os.open refuses a NUL in the name
            raise ImageError(f"{label}: not a usable file name (it contains a NUL character)") from None
    if not data:
        raise ImageError(f"{label}: empty file")
    return data


def _check_size(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{label}: {width}x{height} pixels is too large (limit {MAX_PIXELS:,} pixels)")
    if width < 1 or height < 1:
        raise ImageError(f"{label}: {width}x{height} pixels: the image is empty")


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation; 1 (upright) when there is none or it cannot be read."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # damaged EXIF must not cost the picture
        return 1


def _to_rgb(image: Image.Image, orientation: int) -> Image.Image:
    """First frame, upright, alpha flattened on white, 16-bit and float scaled, CMYK converted."""
    if getattr(image, "is_animated", False):
        image.seek(0)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_eight_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, "white")
        rgba = image.convert("RGBA")
        background.paste(rgba, mask=rgba.getchannel("A"))
        background.info[TRANSPARENT] = rgba  # for a model that flattens on another colour (with_alpha)
        return background
    return image.convert("RGB")


def with_alpha(image: Image.Image) -> Image.Image:
    """The RGBA picture load_image flattened `image` from, or `image` itself when it had no alpha: a model whose
    reference preprocessing composites transparency on another colour (JTP: grey) starts from it."""
    return image.info.get(TRANSPARENT, image)


def _to_eight_bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale (any byte order) as 8-bit L; convert("L") would clip to white."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if image.mode == "F" and values.max(initial=0.0) <= 1.0:
        values = values * 255  # float images hold 0..1
    elif image.mode != "F":
        values = values / 256  # 16-bit range (PNG's 16-bit greyscale opens as "I")
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")


def bounded(image: Image.Image) -> Image.Image:
    """`image`, cut to its centre when it is more than MAX_ASPECT times as long as it is wide.

    A model scales a picture before it looks at it, and a thin strip makes that step explode: CLIP's resize
    scales the short side up to its input size, so a 1x100000 PNG of 275 bytes becomes 224 x 22,400,000
    pixels before the centre crop keeps 224 x 224, and padding it to a square (the WD tagger) makes
    100000 x 100000. Cut at MAX_ASPECT:1, the resized image has at most MAX_ASPECT squares of the model's
    size and the padded square at most MAX_ASPECT times the image's pixels, which the bomb guard bounds.
    A crop-to-square model sees the same centre square as before (the cut keeps 3.5 squares either side
    of it); every image up to MAX_ASPECT:1 is returned as it is."""
    width, height = image.size
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return image
    if width > height:
        left = (width - MAX_ASPECT * height) // 2
        return image.crop((left, 0, left + MAX_ASPECT * height, height))
    top = (height - MAX_ASPECT * width) // 2
    return image.crop((0, top, width, top + MAX_ASPECT * width))


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
