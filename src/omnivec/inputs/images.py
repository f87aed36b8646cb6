"""Image inputs: :class:`Image`, safe decoding, and the pixel modes images leave parsing in.

Decoding rules (why they exist):

* Image sizes are checked from the header before pixels are decoded (decompression bombs).
* Only common raster formats are decoded (no EPS/Ghostscript or exotic plugins).
* EXIF orientation is applied, so an image looks the way a viewer shows it.

Pixel modes: a loaded image is ``"RGB"``, or ``"RGBA"`` when it has real transparency (an
alpha channel, a palette or colour key with a transparent entry, and at least one pixel that
is not fully opaque). High-bit modes (16-bit, 32-bit int, float) are scaled to 8 bits. What
to do with alpha is left to each model family, because the reference pipelines differ:
jina-embeddings-v4 drops it with a plain ``convert("RGB")`` (transparent pixels keep their
stored colour), while reading text (OCR) needs :func:`composite_on_white`.
"""

from __future__ import annotations

import io
import os

from PIL import Image as PILImage
from PIL import ImageOps

from .limits import DecodePlan, InputError, InputLimits
from .sources import describe_source, source_bytes

__all__ = ["Image", "composite_on_white"]

# Common raster formats only: no EPS (Ghostscript subprocess) and no exotic plugins.
_ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP", "TIFF", "WEBP", "JPEG2000", "AVIF", "PPM", "QOI")
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _open_formats() -> list[str]:
    PILImage.init()
    return [f for f in _ALLOWED_FORMATS if f in PILImage.OPEN]


def _check_pixels(size: tuple[int, int], limits: InputLimits) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InputError(None, f"not a valid image (empty size {w}x{h})")
    if w * h > limits.max_image_pixels:
        raise InputError(
            None, f"image is too large: {w}x{h} = {w * h} pixels > {limits.max_image_pixels}"
        )


def _can_be_transparent(im: PILImage.Image) -> bool:
    """An alpha channel, or a palette/colour key with a transparent entry."""
    if im.mode in _ALPHA_MODES:
        return True
    if im.mode in ("P", "L", "RGB", "1"):
        return bool(getattr(im, "has_transparency_data", "transparency" in im.info))
    return False


def _to_8bit(im: PILImage.Image) -> PILImage.Image:
    """A new RGB or RGBA image: RGBA whenever the mode can carry transparency, high-bit scaled."""
    if im.mode in _HIGH_BIT_MODES:
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif im.mode != "F" and arr.size and arr.max() > 255:
            arr = arr / 257.0
        arr = np.nan_to_num(arr, nan=0.0).clip(0, 255).astype(np.uint8)
        return PILImage.fromarray(arr, mode="L").convert("RGB")
    # convert() to the same mode returns a copy: the caller's image is never handed back.
    return im.convert("RGBA") if _can_be_transparent(im) else im.convert("RGB")


def _model_mode(im: PILImage.Image) -> PILImage.Image:
    """The mode a loaded image leaves parsing in: RGBA if any pixel is transparent, else RGB."""
    out = _to_8bit(im)
    if out.mode == "RGBA" and out.getchannel("A").getextrema()[0] == 255:
        return out.convert("RGB")  # an alpha channel that is opaque everywhere carries nothing
    return out


def composite_on_white(img: PILImage.Image) -> PILImage.Image:
    """Return ``img`` as RGB with any transparency composited onto a white background.

    For reading text: dark text on a transparent background stays readable, where a plain
    ``convert("RGB")`` would often turn the background black. Accepts any PIL mode (high-bit
    modes are scaled as in decoding); an RGB image is returned as is, anything else as a new
    image.
    """
    if img.mode == "RGB" and not _can_be_transparent(img):
        return img
    rgba = _to_8bit(img)
    if rgba.mode != "RGBA":
        return rgba
    white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    return white.convert("RGB")


def _finish(im: PILImage.Image, limits: InputLimits) -> PILImage.Image:
    """Decode pixels, apply EXIF orientation, convert to RGB/RGBA; every failure is an InputError."""
    try:
        im.load()
    except PILImage.DecompressionBombError as e:
        raise InputError(None, f"image is too large ({e})") from None
    except Exception as e:  # PIL raises many types for damaged data; all mean the same here
        raise InputError(None, f"not a valid image (truncated or corrupt: {type(e).__name__}: {e})") from None
    _check_pixels(im.size, limits)  # some formats pick their final size at load time
    try:
        rotated = ImageOps.exif_transpose(im)
        if rotated is not None:
            im = rotated
    except Exception:
        pass  # a damaged EXIF block should not lose an otherwise good image
    try:
        return _model_mode(im)
    except Exception as e:
        raise InputError(None, f"not a valid image (cannot convert mode {im.mode} to RGB: {e})") from None


def _decode_image_bytes(data: bytes, limits: InputLimits) -> PILImage.Image:
    """Decode encoded image bytes with a header-level pixel check before any pixel work."""
    im = _open_image_bytes(data, limits)
    try:
        return _finish(im, limits)
    finally:
        im.close()


def _open_image_bytes(data: bytes, limits: InputLimits) -> PILImage.Image:
    """Open encoded image bytes: header read and its size checked, no pixel decoded yet."""
    if not data:
        raise InputError(None, "not a valid image (empty data)")
    try:
        im = PILImage.open(io.BytesIO(data), formats=_open_formats())
    except PILImage.DecompressionBombError as e:
        raise InputError(None, f"image is too large ({e})") from None
    except PILImage.UnidentifiedImageError:
        raise InputError(None, "not a valid image (unrecognised or unsupported format)") from None
    except Exception as e:
        raise InputError(None, f"not a valid image ({type(e).__name__}: {e})") from None
    try:
        _check_pixels(im.size, limits)
    except InputError:
        im.close()
        raise
    return im


class Image:
    """An image input: path, bytes, PIL image, base64 string, data URI or http(s) URL.

    Wrapping marks a value as an image (a bare str is text); nothing is read until
    :meth:`load`, so the limits of the caller (library or server) decide what is allowed.
    """

    def __init__(self, source: str | bytes | os.PathLike | PILImage.Image) -> None:
        if not isinstance(source, (str, bytes, bytearray, memoryview, os.PathLike, PILImage.Image)):
            raise InputError(
                None,
                f"Image source must be str, bytes, os.PathLike or PIL.Image.Image, not {type(source).__name__}",
            )
        self.source = source

    def __repr__(self) -> str:
        return f"Image({describe_source(self.source)})"

    def load(self, limits: InputLimits = InputLimits()) -> PILImage.Image:
        """Return a new RGB image, or RGBA if it has transparency; InputError if bad.

        EXIF orientation is applied and high-bit modes are scaled to 8 bits; alpha is kept as
        it is (see the module docstring), never composited here.
        """
        if isinstance(self.source, PILImage.Image):
            _check_pixels(self._given_size(), limits)
            return _finish(self.source, limits)
        return _decode_image_bytes(source_bytes(self.source, limits, "image"), limits)

    def plan(self, limits: InputLimits = InputLimits()) -> DecodePlan:
        """The header's width x height and a loader (what :meth:`load` returns, as a list).

        Why: :func:`~omnivec.inputs.parse_inputs` adds up a request's pixels before decoding
        any input. The source is read once; the header's size is checked here.
        """
        if isinstance(self.source, PILImage.Image):
            w, h = self._given_size()
            _check_pixels((w, h), limits)
            return DecodePlan(w * h, lambda: [self.load(limits)])
        im = _open_image_bytes(source_bytes(self.source, limits, "image"), limits)

        def load() -> list[PILImage.Image]:
            try:
                return [_finish(im, limits)]
            finally:
                im.close()

        return DecodePlan(im.size[0] * im.size[1], load)

    def _given_size(self) -> tuple[int, int]:
        assert isinstance(self.source, PILImage.Image)
        try:
            return self.source.size
        except Exception as e:
            raise InputError(None, f"not a valid image ({e})") from None
