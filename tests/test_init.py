"""Weight initializers: the spread each one promises, and the cnn plan passing its choice on."""

import numpy as np
import pytest

from pipeline.nn.init import INITS
from pipeline.nn.model import Model
from pipeline.nn.models import DEFAULTS, build_spec


@pytest.mark.parametrize("name,std", [("he", lambda f: np.sqrt(2 / f)),
                                      ("torch", lambda f: 1 / np.sqrt(3 * f)),
                                      ("xavier", lambda f: np.sqrt(2 / (f + 64)))])
def test_spread_matches_the_formula(name, std):
    fan_in = 800
    w = INITS[name](np.random.default_rng(0), (fan_in, 64), fan_in, 64)
    assert w.dtype == np.float32
    assert abs(w.std() / std(fan_in) - 1) < 0.02
    if name == "torch":  # uniform, bounded by 1/sqrt(fan_in)
        assert np.abs(w).max() <= 1 / np.sqrt(fan_in)


def test_cnn_plan_uses_the_chosen_init():
    def weights(init):
        hp = {**DEFAULTS["cnn"], "plan": "8c5-p-fc16", "init": init}
        m = Model(build_spec("cnn", hp), rng=np.random.default_rng(0))
        return m.params["c1.w"], m.params["out.w"]

    (he_c, _), (t_c, t_o) = weights("he"), weights("torch")
    fan_in = 25
    assert np.abs(t_c).max() <= 1 / np.sqrt(fan_in) < np.abs(he_c).max()
    assert abs(he_c.std() / t_c.std() - np.sqrt(6)) < 0.6  # He is sqrt(6) times wider
    assert np.abs(t_o).max() <= 1 / np.sqrt(16)  # the output layer follows the choice too
