"""Uploaded image bytes -> uint8[3, H, W] tensors, refusing what should not be decoded.

The pixel count is read from the header and checked before anything is decoded, so a
decompression bomb (a small file claiming a huge canvas) costs nothing. Pillow reads the header
lazily; ``load()`` then decodes and fails on truncated data instead of padding it with grey.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from service.refusal import Refusal, TooLarge, Unsupported

FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})
"""MPO: the JPEG variant many cameras write (a JPEG with extra frames; the first is used)."""


class ImageError(Refusal):
    """An uploaded file that is no readable image (empty, truncated, damaged)."""


class ImageTooLarge(ImageError, TooLarge):  # noqa: N818
    """More pixels than the limit, read from the header before decoding."""


class UnsupportedImage(ImageError, Unsupported):  # noqa: N818
    """Not an image, or one in a format not in :data:`FORMATS`."""


def decode_upload(name: str, data: bytes, *, max_pixels: int) -> Tensor:
    """One uploaded file as uint8[3, H, W] RGB; :class:`ImageError` naming the file."""
    if not data:
        raise ImageError("invalid_image", f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns (or raises past 2x its limit); ours is below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("image_too_large", f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedImage(
            "unsupported_image", f"{name}: not an image in a supported format"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # a recognised but broken header
        raise ImageError("invalid_image", f"{name}: cannot read the image: {exc}") from None
    with image:
        if image.format not in FORMATS:
            raise UnsupportedImage(
                "unsupported_image",
                f"{name}: format {image.format} is not supported "
                f"(supported: {', '.join(sorted(FORMATS))})",
            )
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                "image_too_large",
                f"{name}: {width}x{height} pixels exceeds the limit of {max_pixels}",
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                rgb = image.convert("RGB")  # decodes; truncated data raises OSError
        # TypeError: Pillow's TIFF reader on a damaged offset table (found by fuzzing).
        except (OSError, SyntaxError, ValueError, TypeError) as exc:
            raise ImageError("invalid_image", f"{name}: cannot decode the image: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
