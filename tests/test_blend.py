"""The classical side of the served distribution (`mambacast.blend`): the pooling rule, the stored GARCH(1,1)-t
and HAR-t fits, and that the backtest's forecaster and the predictor serve exactly that rule on real prices."""

from __future__ import annotations

import numpy as np
import pytest

from mambacast.blend import Blend, check_weights, fit_garch, fit_har, pool_student_t
from mambacast.config import TrainConfig
from mambacast.data.sources import load_prices
from mambacast.evaluate.baselines import GarchT
from mambacast.evaluate.har import HarT

from .samples import needs_sample

HORIZONS = [1, 5, 10, 30]


@pytest.fixture(scope="module")
def closes():
    return load_prices("KO", days=1500)["close"].to_numpy(dtype=np.float64)


def _sd(scale, df):
    return scale * np.sqrt(df / (df - 2))


def test_pool_rule_by_hand():
    loc, scale, df = np.array([[0.01, 0.02]]), np.array([[0.02, 0.05]]), np.array([5.0, 10.0])
    g_loc, g_scale, g_df = np.array([[0.03, -0.02]]), np.array([[0.04, 0.03]]), 8.0
    h_loc, h_scale, h_df = np.array([[-0.01, 0.03]]), np.array([[0.03, 0.06]]), np.array([[6.0, 12.0]])
    assert pool_student_t(loc, scale, df, []) == (loc, scale)                                  # the network alone
    assert pool_student_t(loc, scale, df, [(0.0, g_loc, g_scale, g_df)]) == (loc, scale)
    mu1, s1 = pool_student_t(loc, scale, df, [(1.0, g_loc, g_scale, g_df)])
    np.testing.assert_allclose(mu1, g_loc)
    np.testing.assert_allclose(_sd(s1, df), _sd(g_scale, g_df))                    # GARCH's sd, the net's tail
    third = 1 / 3
    mu, s = pool_student_t(loc, scale, df, [(third, g_loc, g_scale, g_df), (third, h_loc, h_scale, h_df)])
    np.testing.assert_allclose(mu, (loc + g_loc + h_loc) / 3)
    np.testing.assert_allclose(_sd(s, df), np.cbrt(_sd(scale, df) * _sd(g_scale, g_df) * _sd(h_scale, h_df)))
    _, sg = pool_student_t(loc, scale, df, [(1.0, g_loc, g_scale, None)])             # Gaussian GARCH fallback
    np.testing.assert_allclose(_sd(sg, df), g_scale)


def test_weights_are_checked_where_users_set_them():
    check_weights(0.5, 0.5)
    for bad in ((0.7, 0.4), (-0.1, 0.3), (0.2, 1.5)):
        with pytest.raises(ValueError, match="weight"):
            check_weights(*bad)
        with pytest.raises(ValueError, match="weight"):
            TrainConfig(garch_weight=bad[0], har_weight=bad[1])
    assert TrainConfig().garch_weight == TrainConfig().har_weight == pytest.approx(1 / 3)


@needs_sample("KO")
def test_stored_fits_forecast_as_the_fitted_ones(closes):
    garch = fit_garch(closes[:1200])
    har = fit_har(closes[:1200], HORIZONS)
    assert garch.converged and har.fit_info_["mode"] == "per-symbol"
    for fitted, restored in ((garch, GarchT.from_dict(garch.to_dict())), (har, HarT.from_dict(har.to_dict()))):
        a = fitted.predict_many(closes, [1300, 1499], HORIZONS)
        b = restored.predict_many(closes, [1300, 1499], HORIZONS)
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.scale, b.scale)
        np.testing.assert_array_equal(a.df, b.df)
    with pytest.raises(ValueError, match="horizon 2 was not stored"):
        HarT.from_dict(har.to_dict()).predict_many(closes, [1300], [2])


@needs_sample("KO")
def test_metadata_round_trip_and_refusals(closes):
    blend = Blend.fit({"KO": closes}, HORIZONS)
    again = Blend.from_metadata({"blend": blend.to_dict()})
    assert (again.garch_weight, again.har_weight, again.horizons) == (1 / 3, 1 / 3, HORIZONS)
    assert again.garch["KO"].params_ == blend.garch["KO"].params_
    assert again.har["KO"].to_dict() == blend.har["KO"].to_dict()
    alone = Blend.from_metadata({})                                    # models stored before the pool: the net
    assert (alone.garch_weight, alone.har_weight) == (0.0, 0.0)
    garch_only = blend.to_dict()                                       # stored before HAR-t joined: as it was
    for key in ("har_weight", "har", "horizons"):
        del garch_only[key]
    old = Blend.from_metadata({"blend": {**garch_only, "garch_weight": 0.5}})
    assert (old.garch_weight, old.har_weight, old.har) == (0.5, 0.0, {})
    none = Blend.fit({"KO": closes}, HORIZONS, 0.0, 0.0)               # weights 0 fit nothing
    assert none.garch == {} and none.har == {}
    with pytest.raises(ValueError, match="har_weight"):
        Blend.fit({"KO": closes}, HORIZONS, 0.3, 1.5)
    bad = blend.to_dict()
    bad["garch"]["KO"]["params"]["omega"] = float("nan")               # type: ignore[index]
    with pytest.raises(ValueError, match="not a valid fit"):
        Blend.from_metadata({"blend": bad})
    bad = blend.to_dict()
    bad["har"]["KO"]["horizons"]["5"]["nu"] = 1.5                      # type: ignore[index]
    with pytest.raises(ValueError, match="not a valid fit"):
        Blend.from_metadata({"blend": bad})


@needs_sample("KO")
def test_unseen_symbol_gets_fits_on_its_history(closes):
    blend = Blend(horizons=HORIZONS)
    garch, har = blend._fits_for("NEW", closes)
    assert blend.garch["NEW"] is garch and garch.params_ == fit_garch(closes).params_
    assert blend.har["NEW"] is har and har.to_dict() == fit_har(closes, HORIZONS).to_dict()
    assert blend._fits_for("NEW", closes[:300]) == (garch, har)         # fitted once, then kept


@needs_sample("KO")
def test_apply_is_the_rule_on_the_stored_fits(closes):
    blend = Blend.fit({"KO": closes[:1200]}, HORIZONS)
    origins = [1250, 1499]
    loc, scale, df = np.full((2, 4), 1e-3), np.full((2, 4), 0.02), np.array([4.0, 5.0, 6.0, 7.0])
    g = blend.garch["KO"].predict_many(closes, origins, HORIZONS)
    h = blend.har["KO"].predict_many(closes, origins, HORIZONS)
    others = [(1 / 3, g.mean, g.scale, g.df), (1 / 3, h.mean, h.scale, h.df)]
    expected = pool_student_t(loc, scale, df, others)
    got = blend.apply("KO", closes, origins, HORIZONS, loc, df, scale, 2 * scale)   # two scales, one pass
    np.testing.assert_allclose(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1])
    np.testing.assert_allclose(got[2], pool_student_t(loc, 2 * scale, df, others)[1])


@needs_sample("KO")
def test_serving_with_stored_fits_refits_nothing(closes, monkeypatch):
    """A served forecast only filters the request's closes through the stored fits: no estimation per request."""
    state = Blend.fit({"KO": closes[:1200]}, HORIZONS).to_dict()
    blend = Blend.from_metadata({"blend": state})

    def refit(*_: object, **__: object) -> None:
        raise AssertionError("a served forecast refitted a classical model")

    monkeypatch.setattr(GarchT, "fit", refit)
    monkeypatch.setattr(HarT, "fit", refit)
    monkeypatch.setattr("mambacast.evaluate.har.HarFit._fit", refit)
    loc, scale, df = np.full((1, 4), 1e-3), np.full((1, 4), 0.02), np.array([4.0, 5.0, 6.0, 7.0])
    for end in (1300, 1400, 1500):
        blend.apply("KO", closes[:end], [end - 1], HORIZONS, loc, df, scale)
    # ... and its law is `predict_many`'s without the quantiles
    g, h = blend.garch["KO"], blend.har["KO"]
    for model in (g, h):
        law = model.law_many(closes, [1499], HORIZONS)
        full = model.predict_many(closes, [1499], HORIZONS)
        np.testing.assert_array_equal(law[0], full.mean)
        np.testing.assert_array_equal(law[1], full.scale)
    assert g.law_many(closes, [1499], HORIZONS)[2] == g.nu_


@needs_sample("KO")
def test_serving_imports_no_arch():
    """`arch` (with matplotlib, 1.2-1.9 s) is imported where a GARCH-t is fitted, not by the predictor: a stored
    model's fits are restored, never refitted, per request (above)."""
    import subprocess
    import sys

    code = ("import sys, mambacast.predict\n"
            "print('arch' in sys.modules, 'matplotlib' in sys.modules)\n"
            "from mambacast.blend import fit_garch\n"
            "from mambacast.data.sources import load_prices\n"
            "g = fit_garch(load_prices('KO', days=800)['close'].to_numpy())\n"
            "print('arch' in sys.modules, g.fit_info_['status'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-4:] == ["False", "False", "True", "garch"]
