"""Digit images in and out of the 28x28 grid: a person's own picture or photo prepared the way
MNIST digits were (grayscale, the ink told from the paper and its lighting, light ink on dark,
cropped, scaled into 20x20, centered by mass in 28x28), and a 28x28 digit drawn as text art.

Files are read with matplotlib, which decodes PNG itself and every other format through Pillow.
Classifying the result is the caller's job; nothing here knows about models or project files.
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
    """Grayscale (H, W) -> ink (H, W) in [0, 1]: 0 wherever there is no digit, whatever the
    polarity, background or lighting.

    1. Polarity: ink is the minority of pixels, so it is the heavier tail of the pixel values
       once a fitted plane (the lighting's trend) is taken away.
    2. Background: a grayscale closing (for dark ink; an opening for light ink) with a window
       wider than any stroke follows the paper, its gradients and wide shadows, and removes the
       strokes; the difference is the ink (a morphological top-hat).
    3. Otsu's threshold on that difference separates ink from the paper's noise; of the
       connected pieces, those touching the image's edge (a shadow or the edge of the sheet)
       and small specks are dropped, unless nothing else is left.
    """
    gray = np.asarray(gray, np.float32)
    smooth = _smooth(gray)  # (H, W): a light blur, so pixel noise does not pass for ink
    dark = _dark_ink(smooth)
    x, xs = (-gray, -smooth) if dark else (gray, smooth)  # ink is bright in x
    k = _odd(WINDOW * min(gray.shape))  # a first window, wider than a stroke
    background, t, keep = _separate(xs, k)
    rows, cols = np.nonzero(keep)
    size = max(np.ptp(rows), np.ptp(cols)) + 1  # the digit's size, now that it is found
    if _odd(DIGIT_WINDOW * size) > k:  # a wider window, so no thick stroke is taken for paper
        background, t, keep = _separate(xs, _odd(DIGIT_WINDOW * size))
    response = x - background  # (H, W): the ink's own values, edges as sharp as drawn
    top = float(np.percentile(response[keep], 95))  # robust "full ink", not one noisy pixel
    floor = min(0.5 * t, 3 * _noise(response[~keep]))  # the paper's noise set to 0; none: 0
    a = np.clip((response - floor) / max(top - floor, 1e-6), 0, 1)
    return np.where(_dilate(keep.astype(np.float32), 3) > 0, a, 0).astype(np.float32)


WINDOW = 0.2  # first background window, as a share of the image's shorter side
DIGIT_WINDOW = 0.5  # then as a share of the digit's size (strokes are ~1/7 of it, loops ~1/3)
EDGE_SHARE = 0.25  # a piece this long on the image's border (of its shorter side) is no stroke
LOW = 0.35  # hysteresis: pixels above this share of Otsu's threshold join a piece with ink
MIN_CONTRAST = 0.08  # ink must differ from the background by this much (of full scale)
WORK_SIDE = 160  # larger images are analysed shrunk to this longer side (the result is 20x20)


def _odd(size: float) -> int:
    return max(3, int(round(size)) | 1)


def _separate(x: np.ndarray, k: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Bright ink in (H, W) x, with a k-wide window: the background (an opening of x, the
    strokes removed), Otsu's threshold of x above it, and the digit's pieces (bool (H, W))."""
    background = _dilate(_erode(x, k), k)  # (H, W)
    found = np.maximum(x - background, 0)  # (H, W)
    if float(np.percentile(found, 99.9)) < MIN_CONTRAST:
        raise ImageError("the image holds no digit: it is (nearly) one flat color.")
    t = _otsu(found)
    # hysteresis: a faint stretch of stroke joins the piece it belongs to, noise does not
    weak = found > max(LOW * t, 4 * _noise(found[found <= t]))
    return background, t, _digit_pieces(weak, found > t, found)


def _noise(values: np.ndarray) -> float:
    """A robust standard deviation (1.4826 x the median absolute deviation); 0 for none."""
    if values.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _smooth(x: np.ndarray) -> np.ndarray:
    """(H, W) blurred by the separable [1, 2, 1] / 4 kernel (edges repeated)."""
    p = np.pad(x, 1, mode="edge")  # (H+2, W+2)
    x = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4  # (H, W+2)
    return (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4  # (H, W)


def _dark_ink(gray: np.ndarray) -> bool:
    """True for dark ink on light paper: the values' heavier tail, with the lighting's linear
    trend (a least-squares plane) removed first, lies below the median."""
    h, w = gray.shape
    r, c = np.mgrid[0:h, 0:w]
    design = np.stack([np.ones(h * w), r.ravel() / h, c.ravel() / w], axis=1)  # (H*W, 3)
    coef, *_ = np.linalg.lstsq(design, gray.ravel().astype(np.float64), rcond=None)
    detrended = gray.ravel() - design @ coef  # (H*W,)
    low, mid, high = np.percentile(detrended, [1, 50, 99])
    return (mid - low) > (high - mid)


def _window_reduce(x: np.ndarray, k: int, reduce) -> np.ndarray:
    """A k x k running min or max of (H, W), separable, edges repeated."""
    from numpy.lib.stride_tricks import sliding_window_view
    h = k // 2
    x = reduce(sliding_window_view(np.pad(x, ((h, h), (0, 0)), mode="edge"), k, axis=0), axis=-1)
    return reduce(sliding_window_view(np.pad(x, ((0, 0), (h, h)), mode="edge"), k, axis=1),
                  axis=-1)


def _erode(x: np.ndarray, k: int) -> np.ndarray:
    return _window_reduce(x, k, np.min)


def _dilate(x: np.ndarray, k: int) -> np.ndarray:
    return _window_reduce(x, k, np.max)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of the histogram with the largest between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2  # (bins,)
    w0 = np.cumsum(hist)  # pixels at or below each cut
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = (np.sum(hist * mids) - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2  # (bins,)
    return float(edges[1:][np.argmax(between)])


def _label(mask: np.ndarray) -> np.ndarray:
    """Connected pieces (8-neighbours) of a bool (H, W): each pixel's piece id, -1 outside."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)  # (H, W) provisional ids
    while True:
        p = np.pad(lab, 1, constant_values=big)
        low = np.min([p[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)
        flat = np.append(np.where(mask, low, big).ravel(), big)
        low = np.where(mask, flat[flat[low]], big)  # pointer jumping: converge in fewer rounds
        if np.array_equal(low, lab):
            return np.where(mask, lab, -1)
        lab = low


def _digit_pieces(mask: np.ndarray, strong: np.ndarray, response: np.ndarray) -> np.ndarray:
    """The pieces of `mask` (those holding `strong` ink) that make the digit: the strongest
    piece that does not run along the image's edge, and the others near it with at least a
    twentieth of its ink. A piece lying along the edge over a quarter of its length is a shadow
    or the sheet's edge, not a stroke (which crosses the edge, if it touches it at all); it is
    taken only when nothing else is there (a digit cropped tightly)."""
    lab = _label(mask)
    lab = np.where(np.isin(lab, np.unique(lab[strong & mask])), lab, -1)  # pieces with strong ink
    mask = lab >= 0
    ids, inverse = np.unique(lab[mask], return_inverse=True)
    mass = np.bincount(inverse, weights=response[mask])  # (pieces,) ink per piece
    ring = np.zeros(mask.shape, bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    contact = np.bincount(np.searchsorted(ids, lab[ring & mask]), minlength=len(ids))
    along = contact >= EDGE_SHARE * min(mask.shape)  # (pieces,) lying along the edge
    candidates = np.flatnonzero(~along) if (~along).any() else np.arange(len(ids))
    best = int(candidates[np.argmax(mass[candidates])])
    rows, cols = np.nonzero(lab == ids[best])
    span = max(np.ptp(rows), np.ptp(cols)) + 1
    r0, r1 = rows.min() - span // 2, rows.max() + span // 2
    c0, c1 = cols.min() - span // 2, cols.max() + span // 2
    keep = [best]
    for i in np.flatnonzero(mass >= 0.05 * mass[best]):
        if i == best or along[i] != along[best]:
            continue
        pr, pc = np.nonzero(lab == ids[i])
        if pr.min() <= r1 and pr.max() >= r0 and pc.min() <= c1 and pc.max() >= c0:
            keep.append(int(i))
    return np.isin(lab, ids[keep])


def shrink(gray: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """(H, W) area-averaged so its longer side is at most `side` (small images unchanged)."""
    h, w = gray.shape
    scale = side / max(h, w)
    if scale >= 1:
        return gray
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    return resample_matrix(h, oh) @ gray @ resample_matrix(w, ow).T  # (oh, ow)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """A digit image of any size and polarity, (H, W) in [0, 1] -> (28, 28) uint8 like MNIST."""
    a = ink(shrink(np.asarray(gray, np.float32)))  # (h, w) in [0, 1], 0 off the digit
    rows = np.flatnonzero((a >= INK_LEVEL).any(axis=1))
    cols = np.flatnonzero((a >= INK_LEVEL).any(axis=0))
    crop = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # (h, w) in [0, 1]
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
