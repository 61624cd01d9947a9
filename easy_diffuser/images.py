"""Step 1 of the data flow: any image a user has -> a clean RGB PIL image.

Everything that can go wrong with a user's file is turned into an ImageError whose
message names the file and the cause, so callers can report it in one line.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, bytes, Image.Image]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# PIL's own decompression-bomb limit (about 89 megapixels): CLIP sees a few hundred
# pixels, so anything larger is a mistake or an attack, and would cost gigabytes to decode.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageError(ValueError):
    """A user's image that cannot be used; the message is ready to show."""


def load_image(image: ImageInput, name: str | None = None, min_side: int | None = None) -> Image.Image:
    """Open a path, bytes or PIL image and return it as an upright RGB image.

    With `min_side`, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay at least
    `min_side` (libjpeg's DCT scaling): a model that sees 224 pixels needn't decode 4,000, and decoding
    is then several times faster."""
    label = name or _describe(image)
    if isinstance(image, Image.Image):
        return _to_rgb(image, label)
    data = _read_bytes(image, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            _check_size(opened, label)
            if min_side and opened.format == "JPEG":
                opened.draft("RGB", (min_side, min_side))
            opened.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: image is too large to be a real picture (decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label}: broken or truncated image ({error})") from None
    return _to_rgb(opened, label)


def _describe(image: ImageInput) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return "image" if isinstance(image, Image.Image) else "uploaded image"


def _read_bytes(image: ImageInput, label: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        try:
            data = Path(image).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a folder, not an image") from None
        except OSError as error:
            raise ImageError(f"{label}: cannot read ({error.strerror})") from None
    if not data:
        raise ImageError(f"{label}: empty file")
    return data


def _check_size(image: Image.Image, label: str) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{label}: {width}x{height} pixels is too large (limit {MAX_PIXELS:,} pixels)")


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """First frame, EXIF orientation applied, alpha flattened on white, 16-bit and CMYK converted."""
    _check_size(image, label)
    try:
        if getattr(image, "is_animated", False):
            image.seek(0)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # Scale 16-bit range down to 8 bits; convert("L") would clip everything to white.
            image = image.point(lambda value: value / 256).convert("L")
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGB", image.size, "white")
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            return background
        return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ImageError(f"{label}: cannot convert image ({error})") from None


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
