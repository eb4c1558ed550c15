"""Memory a training run will need, estimated from the network's spec before any work starts,
so parameters that cannot fit (a huge --hidden or --batch-size) are refused with the figure
instead of failing (or swapping) an hour later.

The estimate counts float32 parameters with their gradients, optimizer moments and snapshots,
the activations and im2col buffers of one batch forward and backward, and the normalized copies
of the training rows (ensemble members train one after another; each finished one is kept). It
is rough: for the default CNN it says 367 MB where `make submit` peaked at 390 MB (README).
Nothing here runs a network.
"""

from __future__ import annotations

import os

from .config import IMAGE_SIDE, N_CLASSES, N_PIXELS, UserError

PARAM_COPIES = 6  # weights, gradients, two Adam moments, best-epoch snapshot, checkpoint
ACTIVATION_COPIES = 3  # each layer's output, its cache, and its gradient on the way back
SLACK = 1.0  # refuse when the estimate exceeds what is available


class ResourceError(UserError):
    """Parameters whose memory needs cannot fit this machine."""


def estimate_train_bytes(spec: dict, batch: int, n_rows: int = 42000, ensemble: int = 1) -> int:
    """Bytes a training of `spec` with batches of `batch` rows over `n_rows` rows needs."""
    h, w, c = spec.get("input_shape", (IMAGE_SIDE, IMAGE_SIDE, 1))
    size = h * w * c  # elements per sample of the current activation
    params = activations = im2col = 0
    for ly in spec["layers"]:
        kind = ly.get("type")
        if kind == "dense":
            params += ly["in"] * ly["out"] + ly["out"]
            size = ly["out"]
        elif kind == "conv":
            k, pad = ly["k"], ly.get("pad", 0)
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            params += k * k * ly["cin"] * ly["cout"] + ly["cout"]
            im2col = max(im2col, max(h, 0) * max(w, 0) * k * k * ly["cin"])
            c, size = ly["cout"], max(h, 0) * max(w, 0) * ly["cout"]
        elif kind == "pool":
            h, w = h // 2, w // 2
            size = h * w * c
        elif kind == "bn":
            params += 4 * ly["c"]
        activations += size
    per_sample = ACTIVATION_COPIES * activations + 2 * im2col
    data = n_rows * N_PIXELS * 2 + n_rows * N_CLASSES  # normalized rows (+ a train subset copy)
    return 4 * ((PARAM_COPIES + ensemble) * params + batch * per_sample + data)


def available_bytes() -> int | None:
    """Memory this process could still use: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_train_memory(cfg, n_rows: int = 42000) -> int | None:
    """Refuse (ResourceError) a training whose estimate cannot fit; -> the estimate in bytes.

    Options that are invalid in other ways are left for `train.hyperparameters` to name."""
    from .nn.models import build_spec
    from .train import hyperparameters
    try:
        hp = hyperparameters(cfg)
        spec = build_spec(cfg.model, hp)
    except (ValueError, KeyError, TypeError):
        return None
    batch = min(int(hp["batch_size"] or n_rows), n_rows)
    need = estimate_train_bytes(spec, batch, n_rows, hp["ensemble"])
    have = available_bytes()
    if have is not None and need > SLACK * have:
        raise ResourceError(
            f"training this {cfg.model} (batch {batch}, {hp['ensemble']} model(s)) would need "
            f"about {_gb(need)} of memory, but {_gb(have)} is available; choose a smaller "
            f"--hidden, --batch-size or --ensemble.")
    return need


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"
