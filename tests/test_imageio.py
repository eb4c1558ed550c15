"""A person's photo of a digit, prepared like MNIST (imageio.ink / to_mnist): digits from
train.csv put on synthetic photos (a noisy lighting gradient, a dark shadow along an edge, either
polarity, small and large) must come out as the same 28x28 digit as the clean row does, and be
classified as their label by a small MLP trained here on other train.csv rows. Plus the pieces:
Otsu's threshold, connected pieces, the polarity, and `predict-image`'s warning when unsure."""

from __future__ import annotations

import io
import zipfile

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import imageio
from pipeline.imageio import ImageError, resample_matrix, to_mnist

N_MODEL_ROWS = 6000  # train.csv rows the test model learns from
N_PICK = 3  # digits of each label tried on photos, taken after the model's rows


def photo(digit: np.ndarray, shape: tuple[int, int], *, dark_ink: bool = True, seed: int = 0,
          noise: float = 0.04, shadow: str = "right", fill: float = 0.55) -> np.ndarray:
    """(28, 28) uint8 digit -> (H, W) float photo in [0, 1]: paper lit by a gradient, the ink
    darkening it, a dark shadow along one edge, Gaussian noise; inverted for light ink."""
    rng = np.random.default_rng(seed)
    h, w = shape
    side = int(fill * min(h, w))
    big = resample_matrix(28, side) @ (digit / 255.0) @ resample_matrix(28, side).T  # (side, side)
    ink = np.zeros(shape)
    r0 = int(rng.integers(h // 8, h - side - h // 8 + 1))
    c0 = int(rng.integers(w // 8, w - side - w // 8 + 1))
    ink[r0:r0 + side, c0:c0 + side] = big
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    paper = 0.92 - 0.3 * xx - 0.15 * yy  # lighting falling off across the sheet
    edge = {"right": xx, "bottom": yy, "left": 1 - xx, "top": 1 - yy}[shadow]
    paper = paper * (1 - 0.65 / (1 + np.exp(-(edge - 0.93) / 0.012)))  # a shadow, 7% wide
    img = paper * (1 - 0.8 * ink) + noise * rng.standard_normal(shape, np.float32)
    img = np.clip(img, 0, 1, dtype=np.float32)
    return img if dark_ink else 1 - img


def load_rows(path):
    """The first rows of the real train.csv: (N, 784) uint8 pixels and (N,) labels."""
    with zipfile.ZipFile(path) as z, z.open("train.csv") as f:
        text = "".join(line for _, line in zip(range(N_MODEL_ROWS + 400),
                                               io.TextIOWrapper(f, encoding="utf-8")))
    table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.int64)
    return table[:, 1:].astype(np.uint8), table[:, 0]


def train_classifier(rows):
    """A small MLP trained on the first N_MODEL_ROWS rows: (N, 784) uint8 -> (N, 10) proba."""
    from pipeline.params import TrainConfig
    from pipeline.predict import predict_proba
    from pipeline.preprocess import fit_normalizer, normalize
    from pipeline.train import train
    x, y = rows[0][:N_MODEL_ROWS], rows[1][:N_MODEL_ROWS]
    norm = fit_normalizer(x)
    cfg = TrainConfig(model="mlp", epochs=8, hidden=(128,),  # 93.5% on the next 399 rows
                      augment="shift=2,rotate=10,zoom=0.1,elastic=0")
    model = train(cfg, normalize(x, norm), y, progress=False).model
    return lambda pixels: predict_proba([model], normalize(pixels, norm))


def pick(rows, classify, n=N_PICK):
    """Held-out digits, n of every label, that the model reads right and surely when clean:
    (28x28 digit, label, the clean digit as to_mnist prepares it)."""
    x, y = rows[0][N_MODEL_ROWS:], rows[1][N_MODEL_ROWS:]
    prepared = np.stack([to_mnist(d.reshape(28, 28) / 255.0).ravel() for d in x])
    proba = classify(prepared)
    right = (proba.argmax(1) == y) & (proba.max(1) > 0.9)  # so a misread is the photo's doing
    chosen = [i for label in range(10) for i in np.flatnonzero(right & (y == label))[:n]]
    return [(x[i].reshape(28, 28), int(y[i]), prepared[i].reshape(28, 28))
            for i in dict.fromkeys(chosen)]


@pytest.fixture(scope="module")
def rows(real_zip):
    return load_rows(real_zip)


@pytest.fixture(scope="module")
def classify(rows):
    return train_classifier(rows)


@pytest.fixture(scope="module")
def picks(rows, classify):
    return pick(rows, classify)


CASES = [  # (shape, dark ink?, shadow edge, every how many picks to try, misreads allowed)
    ((600, 480), True, "right", 1, 1), ((480, 600), False, "bottom", 2, 1),
    ((44, 40), True, "left", 1, 3), ((44, 40), False, "top", 1, 3),  # a 22-pixel digit
    ((1000, 750), True, "bottom", 3, 1), ((90, 140), False, "right", 1, 1),
]


@pytest.mark.parametrize("shape, dark, shadow, every, allowed", CASES)
def test_photos_come_out_as_the_clean_digit_and_are_classified_right(picks, classify, shape,
                                                                     dark, shadow, every,
                                                                     allowed):
    # each digit, on a noisy lit sheet with a shadowed edge, in either polarity and at any size,
    # is prepared nearly as its clean row is, and the model reads the right label from it
    similarity, wrong = [], []
    for k, (digit, label, clean) in enumerate(picks[::every]):
        got = to_mnist(photo(digit, shape, dark_ink=dark, shadow=shadow, seed=k))
        similarity.append(np.corrcoef(got.ravel().astype(float), clean.ravel().astype(float))[0, 1])
        if classify(got.reshape(1, -1)).argmax() != label:
            wrong.append(label)
    assert len(picks) == 10 * N_PICK  # every label, 3s among them
    assert np.median(similarity) > 0.88, np.round(similarity, 2)
    assert np.mean(np.array(similarity) < 0.6) <= 0.05, np.round(similarity, 2)
    assert len(wrong) <= allowed, wrong  # of 10-30; the small test model is not robust either


def test_clean_rows_come_back_as_themselves(rows):
    # a train.csv row is already prepared the MNIST way: preparing it again changes (nearly)
    # nothing, so clean drawings and screenshots lose nothing to the photo handling
    x = rows[0][:300]
    similarity = [np.corrcoef(to_mnist(d.reshape(28, 28) / 255.0).ravel().astype(float),
                              d.astype(float))[0, 1] for d in x]
    assert np.median(similarity) > 0.999 and np.percentile(similarity, 5) > 0.95


def test_the_issues_three_is_read_as_a_three(picks, classify):
    # the case of the report: a 3 on a noisy gradient with a dark edge was a 7 at 31%
    for k, (digit, _, _) in enumerate(p for p in picks if p[1] == 3):
        for dark in (True, False):
            got = to_mnist(photo(digit, (480, 640), dark_ink=dark, noise=0.06, seed=100 + k))
            proba = classify(got.reshape(1, -1))[0]
            assert proba.argmax() == 3, (k, dark, proba.round(2))


def test_the_old_border_median_is_fooled_where_ink_is_not():
    # the mechanism: the shadow is as dark as ink but touches the edge and is wide, so it is not
    # taken for ink; a border-median background (the old way) would keep it
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 13:16] = 255  # a "1"
    img = photo(digit, (300, 300), shadow="right", seed=3)
    a = imageio.ink(imageio.shrink(img))
    h, w = a.shape
    assert a[:, int(0.95 * w):].max() == 0  # nothing kept in the shadow
    assert a[:, : int(0.9 * w)].max() == 1
    cols = np.flatnonzero(a.any(axis=0))
    assert np.ptp(cols) < 0.15 * w  # just the stroke's width


def test_polarity_is_the_heavier_tail_not_the_border():
    # gray paper darker than 0.5 with darker ink is dark-on-light; bright ink on it is light
    rng = np.random.default_rng(0)
    paper = 0.4 + 0.02 * rng.standard_normal((60, 60))
    dark, light = paper.copy(), paper.copy()
    dark[20:40, 28:33] = 0.05
    light[20:40, 28:33] = 0.95
    assert imageio._dark_ink(dark) and not imageio._dark_ink(light)
    for img in (dark, light):
        got = to_mnist(img)
        assert got[:, 11:18].sum() > 0.95 * got.sum()  # the stroke alone, in the middle


def test_otsu_splits_two_clusters_between_them():
    # Otsu's cut falls between two well separated groups of values
    rng = np.random.default_rng(1)
    low, high = rng.normal(0.1, 0.02, 900), rng.normal(0.7, 0.05, 100)
    t = imageio._otsu(np.concatenate([low, high]))
    assert low.max() <= t < high.min()


def test_label_finds_connected_pieces_with_diagonals():
    # 8-connected pieces get one id each; a diagonal touch joins, a gap separates
    mask = np.zeros((7, 9), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # one diagonal piece
    mask[1:6, 6] = True  # a bar
    mask[5, 1] = True  # a single pixel
    lab = imageio._label(mask)
    assert len(np.unique(lab[mask])) == 3
    assert lab[1, 1] == lab[3, 3] != lab[1, 6] and (lab[~mask] == -1).all()


def test_specks_and_noise_alone_are_no_digit():
    # pure noise, or flat paper with a lighting gradient, holds no digit
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:80, 0:80] / 80
    with pytest.raises(ImageError, match="no digit"):
        to_mnist(np.clip(0.8 - 0.05 * xx + 0.01 * rng.standard_normal((80, 80)), 0, 1))


def test_predict_image_warns_when_unsure(tmp_path, monkeypatch):
    # a top probability under 0.6 adds a warning line on stderr; a sure one does not
    from pipeline import glance
    from pipeline.cli import cli
    digit = np.zeros((28, 28))
    digit[6:22, 13:16] = 1
    png = tmp_path / "one.jpg"
    mpimg.imsave(png, 1 - digit, cmap="gray", vmin=0, vmax=1)  # any format Pillow writes
    for top, warned in ((0.45, True), (0.9, False)):
        proba = np.full(10, (1 - top) / 9, np.float32)
        proba[1] = top
        monkeypatch.setattr(glance, "classify", lambda paths, pixels, p=proba: p[None])
        result = CliRunner().invoke(cli, ["--root", str(tmp_path), "predict-image", str(png)],
                                    catch_exceptions=False)
        assert result.exit_code == 0 and "predicted 1" in result.output
        assert ("unsure" in result.output) == warned, result.output
