"""Inference that does not recompute what is blank. An MNIST digit leaves most of its image at
one value (the normalized 0 of the background), and every image's background gives the same
activations there: at a pixel whose receptive field lies wholly in the background, a layer's
output is the output of an all-background image at that pixel. `BlankRun` runs an inference
plan on a chunk of images and tracks those pixels from layer to layer:

- the input's blank pixels are those equal to the chunk's first pixel in every channel (so
  images with another background, or none, simply find few blank pixels);
- a k x k conv keeps blank the outputs whose k x k window is all blank (its zero padding is
  the same in every image, so it counts as blank), a 2x2 pool those whose four inputs are,
  BatchNorm, activations and dropout (identity in inference) keep the mask as it is; flatten
  and dense layers end it;
- the reference, the all-background image, goes through the same plan once per background
  value, and its input to each step is kept.

The Winograd conv steps are told the mask and the reference (`blank=`): their tiles whose
input window is blank take the reference's output and are not computed (about a fifth of the
default cnn's second conv on the test images; winograd_inference.blank_tiles). The result is the
plain plan's up to float32 rounding (tests/test_nn_blank.py), and so is each image's result
whatever the rows beside it.
"""

from __future__ import annotations

import threading

import numpy as np

from pipeline.nn import conv_winograd as Wi
from pipeline.nn import winograd_inference as Wf
from pipeline.nn.plan import conv_inplace_relu_forward, conv_pool_inplace_relu_forward

TAKES_BLANK = (Wi.wino_pool_forward, Wi.wino_conv_forward, conv_pool_inplace_relu_forward,
               conv_inplace_relu_forward)  # the steps with a `blank` argument
KEEP_MASK = ("bn", "act", "dropout")  # layers that act pixel by pixel in inference
MIN_BLANK_PIXELS = 0.1  # a chunk with fewer blank input pixels runs the plain plan (a tile
# needs its whole window blank; MNIST's test chunks are about 80% blank)
REFERENCES_KEPT = 8  # background values whose reference activations a BlankRun keeps


def passed(mask, layers):
    """mask (N, H, W) bool, the blank pixels at the input of `layers` -> those at their output,
    or None when one of them is not a pixel-to-pixel layer (flatten, dense)."""
    for ly in layers:
        kind = ly["type"]
        if kind == "conv":
            p, k = ly.get("pad", 0), ly["k"]
            if p:
                mask = np.pad(mask, ((0, 0), (p, p), (p, p)), constant_values=True)
            mask = Wf.window_all(mask, k)
        elif kind == "pool":
            N, H, W = mask.shape
            mask = (mask[:, 0 : H - 1 : 2, 0 : W - 1 : 2] & mask[:, 0 : H - 1 : 2, 1::2]
                    & mask[:, 1::2, 0 : W - 1 : 2] & mask[:, 1::2, 1::2])
        elif kind not in KEEP_MASK:
            return None
    return mask


class BlankRun:
    """run(x) = plan.run_forward(plan, x, False)[0] up to rounding, skipping blank work.
    `layers` are the plan's layers (each step starts at its `first`). Thread-safe: chunks may
    run on several threads at once."""

    def __init__(self, plan, layers):
        self.plan = plan
        starts = [st.first for st in plan] + [len(layers)]
        self.layers = [layers[a:b] for a, b in zip(starts, starts[1:])]
        takes = [st.forward in TAKES_BLANK and st.settings.get("winograd", True) for st in plan]
        self.takes = takes
        # the mask is tracked up to the last step that takes it
        self.last = max((i for i, t in enumerate(takes) if t), default=-1)
        self._refs = {}
        self._lock = threading.Lock()

    def run(self, x):
        out = x
        for out in self.outputs(x):  # noqa: B007 (the last one is the result)
            pass
        return out

    def outputs(self, x):
        """Each step's output on x in turn, the last one run's result."""
        if self.last < 0 or x.ndim != 4 or x.shape[0] == 0:
            mask = None
        else:
            background = x[0, 0, 0]  # (C,)
            mask = x[..., 0] == background[0]  # (N, H, W); a NaN is not blank
            for c in range(1, x.shape[-1]):
                mask &= x[..., c] == background[c]
            if mask.mean() < MIN_BLANK_PIXELS:
                mask = None
        refs = self._reference(background, x.shape[1:]) if mask is not None else None
        for i, st in enumerate(self.plan):
            blank = ({"blank": (mask, *refs[i])} if self.takes[i] and mask is not None
                     else {})
            x = st.forward(x, **st.P, train=False, rng=None, **st.settings, **blank)[0]
            if mask is not None and i < self.last:
                mask = passed(mask, self.layers[i])
            yield x

    def _reference(self, background, shape):
        """-> [(each step's input, its memo)] for the image that is `background` at every
        pixel."""
        key = (background.tobytes(), background.dtype.str, shape)
        refs = self._refs.get(key)
        if refs is not None:
            return refs
        with self._lock:
            refs = self._refs.get(key)
            if refs is None:
                x = np.broadcast_to(background, (1, *shape)).copy()
                refs = []
                for st in self.plan[: self.last + 1]:
                    # a copy (a step may change its input's buffer later), and a memo the
                    # step keeps what it derives from it in (conv_winograd._reference_output)
                    refs.append((x.copy(), {}))
                    x = st.forward(x, **st.P, train=False, rng=None, **st.settings)[0]
                if len(self._refs) >= REFERENCES_KEPT:
                    self._refs.clear()
                self._refs[key] = refs
        return refs
