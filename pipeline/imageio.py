"""Digit images in and out of the 28x28 grid: a person's own picture prepared the way MNIST digits
were (grayscale, light ink on dark, cropped, scaled into 20x20, centered by mass in 28x28), and a
28x28 digit drawn as text art for the terminal.

PNG files are read with matplotlib (no Pillow needed for PNG). Classifying the result is the
caller's job; nothing here knows about models or project files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import IMAGE_SIDE, UserError

BOX = 20  # MNIST scaled each digit's bounding box to fit a 20x20 square, aspect ratio kept
INK_LEVEL = 0.1  # share of the strongest ink a pixel needs to count towards the bounding box
RAMP = " .:-=+*#%@"  # text-art shades, from no ink to full ink


class ImageError(UserError):
    """An image file that cannot be read or holds no digit."""


MAX_IMAGE_BYTES = 50 << 20  # a 12-megapixel phone photo as PNG is ~20 MB
MAX_IMAGE_PIXELS = 40_000_000  # decoded as float32 RGBA that is 640 MB; more is refused


def check_image(path: Path) -> tuple[int, int]:
    """Bounds checked before decoding: a regular file under MAX_IMAGE_BYTES whose header
    declares at most MAX_IMAGE_PIXELS (read by Pillow without decoding); -> (width, height)."""
    from PIL import Image

    from .readers import require_file
    fix = "Save the digit as a PNG of a few hundred pixels a side."
    try:
        require_file(path, fix, max_bytes=MAX_IMAGE_BYTES, missing=f"{path} does not exist.")
    except UserError as e:
        raise ImageError(str(e)) from None
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the check is ours, below
    try:
        with Image.open(path) as im:  # lazy: only the header is read
            width, height = im.size
    except Exception as e:  # UnidentifiedImageError, a truncated header, ...
        raise ImageError(f"{path} is not an image file Pillow can read ({type(e).__name__}). "
                         f"{fix}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if width * height > MAX_IMAGE_PIXELS or min(width, height) < 1:
        raise ImageError(f"{path} declares {width}x{height} pixels, outside 1 to "
                         f"{MAX_IMAGE_PIXELS:,} pixels; it is not decoded. {fix}")
    return width, height


def read_image(path: Path) -> np.ndarray:
    """Read an image file as grayscale (H, W) float32 in [0, 1]; transparency shows white.

    Its size and declared dimensions are checked first (check_image)."""
    path = Path(path)
    check_image(path)
    import matplotlib.image as mpimg
    try:
        img = mpimg.imread(path)
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist.") from None
    except Exception as e:  # SyntaxError/ValueError/OSError from the decoders
        raise ImageError(f"{path} is not an image matplotlib can read ({e}); "
                         "save it as a PNG.") from None
    return to_gray(img)


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4) image, uint8 or float -> (H, W) float32 in [0, 1]."""
    img = np.asarray(img)
    if img.dtype.kind in "ui":
        img = img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)
    img = img.astype(np.float32)
    if img.ndim == 3 and img.shape[2] in (2, 4):  # gray/RGB + alpha: composite over white
        alpha = img[:, :, -1:]  # (H, W, 1)
        img = img[:, :, :-1] * alpha + (1 - alpha)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W) luma
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2 or min(img.shape) < 1:
        raise ImageError(f"expected a 2-D grayscale or RGB(A) image, got shape {img.shape}")
    return np.clip(img, 0, 1)


def ink(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) -> ink (H, W) in [0, 1]: 0 is background whatever the polarity.

    The background is the median of the border pixels; a light background (dark ink on paper)
    is flipped, so ink is always bright as in MNIST.
    """
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    a = gray - background if background < 0.5 else background - gray  # (H, W)
    return np.clip(a, 0, None)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """A digit image of any size and polarity, (H, W) in [0, 1] -> (28, 28) uint8 like MNIST."""
    a = ink(gray)  # (H, W)
    peak = float(a.max())
    if peak < 0.1:
        raise ImageError("the image holds no digit: it is (nearly) one flat color.")
    rows = np.flatnonzero((a >= INK_LEVEL * peak).any(axis=1))
    cols = np.flatnonzero((a >= INK_LEVEL * peak).any(axis=0))
    crop = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] / peak  # (h, w) in [0, 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    small = resample_matrix(h, oh) @ crop @ resample_matrix(w, ow).T  # (oh, ow)
    return center_by_mass(np.clip(small, 0, 1))


def center_by_mass(box: np.ndarray) -> np.ndarray:
    """(h, w) ink <= 20x20 -> (28, 28) uint8 with the center of mass moved to the middle."""
    h, w = box.shape
    r, c = np.indices(box.shape)
    mass = box.sum()
    com_r, com_c = (r * box).sum() / mass, (c * box).sum() / mass
    mid = IMAGE_SIDE / 2  # where MNIST digits have their center of mass (row/col 14.0)
    r0 = int(np.clip(round(mid - com_r), 0, IMAGE_SIDE - h))
    c0 = int(np.clip(round(mid - com_c), 0, IMAGE_SIDE - w))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    out[r0:r0 + h, c0:c0 + w] = box
    return np.round(out * 255).astype(np.uint8)


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights resizing one axis: area averages when shrinking (no aliasing),
    linear interpolation between pixel centers when growing. Rows sum to 1."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_out <= n_in:
        step = n_in / n_out
        for i in range(n_out):
            lo, hi = i * step, (i + 1) * step
            for j in range(int(lo), min(int(np.ceil(hi)), n_in)):
                m[i, j] = min(hi, j + 1) - max(lo, j)  # overlap of output and input pixels
    else:
        centers = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        centers = np.clip(centers, 0, n_in - 1)
        j0 = np.minimum(np.floor(centers).astype(int), n_in - 1)
        j1 = np.minimum(j0 + 1, n_in - 1)
        t = (centers - j0).astype(np.float32)
        m[np.arange(n_out), j0] += 1 - t
        m[np.arange(n_out), j1] += t
    return m / m.sum(axis=1, keepdims=True)


def text_art(pixels: np.ndarray) -> str:
    """A (784,) or (28, 28) uint8 digit as 28 lines of text, two characters per pixel."""
    img = np.asarray(pixels).reshape(IMAGE_SIDE, IMAGE_SIDE).astype(np.float32)
    shade = np.minimum((img / 256 * len(RAMP)).astype(int), len(RAMP) - 1)  # (28, 28)
    return "\n".join("".join(RAMP[s] * 2 for s in row).rstrip() for row in shade)


__all__ = ["ImageError", "center_by_mass", "ink", "read_image", "resample_matrix", "text_art",
           "to_gray", "to_mnist"]
