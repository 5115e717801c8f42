"""The GARCH(1,1)-t pool of the served distribution (`mambacast.blend`): the rule, its storage, and that the
backtest's forecaster and the predictor serve exactly that rule on real prices."""

from __future__ import annotations

import numpy as np
import pytest

from mambacast.blend import GarchBlend, blend_student_t, fit_garch
from mambacast.data.sources import load_prices
from mambacast.evaluate.baselines import GarchT


@pytest.fixture(scope="module")
def closes():
    return load_prices("KO", days=1500)["close"].to_numpy(dtype=np.float64)


def test_pool_rule_by_hand():
    loc, scale, df = np.array([[0.01, 0.02]]), np.array([[0.02, 0.05]]), np.array([5.0, 10.0])
    g_loc, g_scale, g_df = np.array([[0.03, -0.02]]), np.array([[0.04, 0.03]]), 8.0
    sd_net = scale * np.sqrt(df / (df - 2))
    sd_g = g_scale * np.sqrt(g_df / (g_df - 2))
    assert blend_student_t(loc, scale, df, g_loc, g_scale, g_df, 0.0) == (loc, scale)   # the network alone
    mu1, s1 = blend_student_t(loc, scale, df, g_loc, g_scale, g_df, 1.0)
    np.testing.assert_allclose(mu1, g_loc)
    np.testing.assert_allclose(s1 * np.sqrt(df / (df - 2)), sd_g)                     # GARCH's sd, the net's tail
    mu, s = blend_student_t(loc, scale, df, g_loc, g_scale, g_df, 0.5)
    np.testing.assert_allclose(mu, [[0.02, 0.0]])
    np.testing.assert_allclose(s * np.sqrt(df / (df - 2)), np.sqrt(sd_net * sd_g))     # geometric mean of sds
    _, sg = blend_student_t(loc, scale, df, g_loc, g_scale, None, 1.0)                 # Gaussian GARCH fallback
    np.testing.assert_allclose(sg * np.sqrt(df / (df - 2)), g_scale)


def test_stored_fit_forecasts_as_the_fitted_one(closes):
    fitted = fit_garch(closes[:1200])
    assert fitted.converged
    restored = GarchT.from_dict(fitted.to_dict())
    a = fitted.predict_many(closes, [1300, 1499], [1, 5, 10, 30])
    b = restored.predict_many(closes, [1300, 1499], [1, 5, 10, 30])
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.df, b.df)


def test_metadata_round_trip_and_refusals(closes):
    blend = GarchBlend.fit({"KO": closes}, 0.5)
    again = GarchBlend.from_metadata({"blend": blend.to_dict()})
    assert again.weight == 0.5 and again.fits["KO"].params_ == blend.fits["KO"].params_
    assert GarchBlend.from_metadata({}).weight == 0.0                  # models stored before the pool: the net
    assert GarchBlend.fit({"KO": closes}, 0.0).fits == {}              # weight 0 fits nothing
    with pytest.raises(ValueError, match="garch_weight"):
        GarchBlend.fit({"KO": closes}, 1.5)
    bad = blend.to_dict()
    bad["garch"]["KO"]["params"]["omega"] = float("nan")               # type: ignore[index]
    with pytest.raises(ValueError, match="not a valid fit"):
        GarchBlend.from_metadata({"blend": bad})


def test_unseen_symbol_gets_a_fit_on_its_history(closes):
    blend = GarchBlend(0.5)
    g = blend.garch_for("NEW", closes)
    assert blend.fits["NEW"] is g and g.params_ == fit_garch(closes).params_
    assert blend.garch_for("NEW", closes[:300]) is g                    # fitted once, then kept


def test_apply_is_the_rule_on_the_stored_fit(closes):
    blend = GarchBlend.fit({"KO": closes[:1200]}, 0.5)
    origins, hs = [1250, 1499], [1, 5, 10, 30]
    loc, scale, df = np.full((2, 4), 1e-3), np.full((2, 4), 0.02), np.array([4.0, 5.0, 6.0, 7.0])
    g = blend.fits["KO"].predict_many(closes, origins, hs)
    expected = blend_student_t(loc, scale, df, g.mean, g.scale, g.df, 0.5)
    got = blend.apply("KO", closes, origins, hs, loc, df, scale, 2 * scale)   # two scales, one GARCH filter
    np.testing.assert_allclose(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1])
    np.testing.assert_allclose(got[2], blend_student_t(loc, 2 * scale, df, g.mean, g.scale, g.df, 0.5)[1])
