"""DataAugmentor: sizes, determinism, no mutation, each distortion."""

from __future__ import annotations

import numpy as np
import pytest

from mambacast.data import DataAugmentor, DataError


def _data(n: int = 40, seq_len: int = 30, n_features: int = 5) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, seq_len, n_features)).astype(np.float32)
    y = {1: rng.normal(size=(n, 1)).astype(np.float32), 5: rng.normal(size=(n, 1)).astype(np.float32)}
    return X, y


def test_appends_round_rate_times_n_copies_with_their_targets() -> None:
    X, y = _data()
    X_aug, y_aug = DataAugmentor(augmentation_rate=0.5, seed=1).augment(X, y)
    assert X_aug.shape == (60, 30, 5) and X_aug.dtype == np.float32
    np.testing.assert_array_equal(X_aug[:40], X)
    for h in y:
        assert y_aug[h].shape == (60, 1)
        np.testing.assert_array_equal(y_aug[h][:40], y[h])
    # each copy's targets are those of the sample it was made from (the nearest original window)
    source = np.array([np.argmin(((X - copy) ** 2).sum(axis=(1, 2))) for copy in X_aug[40:]])
    assert len(set(source)) == 20
    np.testing.assert_array_equal(y_aug[5][40:], y[5][source])


def test_same_seed_same_output_and_inputs_untouched() -> None:
    X, y = _data()
    X.flags.writeable = False  # like the generator's zero-copy view
    before_X, before_y = X.copy(), {h: v.copy() for h, v in y.items()}
    a = DataAugmentor(seed=123).augment(X, y)
    b = DataAugmentor(seed=123).augment(X, y)
    np.testing.assert_array_equal(a[0], b[0])
    for h in y:
        np.testing.assert_array_equal(a[1][h], b[1][h])
    c = DataAugmentor(seed=124).augment(X, y)
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(X, before_X)
    for h in y:
        np.testing.assert_array_equal(y[h], before_y[h])


def test_each_distortion_alone() -> None:
    X, y = _data(n=10)
    noise = DataAugmentor(1.0, noise_std=0.5, warp_std=0, dropout_rate=0, seed=0).augment(X, y)[0][10:]
    assert 0.4 < float(np.std(noise - X)) < 0.6  # copies are a permutation of all 10 (rate 1, no replacement)
    warped = DataAugmentor(1.0, noise_std=0, warp_std=0.2, dropout_rate=0, seed=0).augment(X, y)[0][10:]
    ratio = warped / X  # rate 1 without replacement: the copies are samples 0..9 in order
    assert float(np.abs(np.diff(ratio, axis=1)).max()) < 0.35  # a smooth curve over time: no day-to-day jumps
    assert 0.1 < float(ratio.std()) < 0.3 and abs(float(ratio.mean()) - 1) < 0.1
    dropped = DataAugmentor(1.0, noise_std=0, warp_std=0, dropout_rate=0.5, seed=0).augment(X, y)[0][10:]
    zero_features = (dropped == 0).all(axis=1)  # (n, n_features): a feature is zeroed over the whole window
    assert 0 < zero_features.sum() < zero_features.size
    np.testing.assert_array_equal(dropped[~np.repeat(zero_features[:, None, :], 30, axis=1)],
                                  X[~np.repeat(zero_features[:, None, :], 30, axis=1)])


def test_zero_rate_and_bad_arguments() -> None:
    X, y = _data()
    X_aug, y_aug = DataAugmentor(0.0).augment(X, y)
    np.testing.assert_array_equal(X_aug, X)
    assert X_aug is not X
    with pytest.raises(DataError, match="dropout_rate=1.5"):
        DataAugmentor(dropout_rate=1.5)
    with pytest.raises(DataError, match="augmentation_rate=-1"):
        DataAugmentor(-1)
    with pytest.raises(DataError, match=r"y\[1\] has 3 samples but X has 40"):
        DataAugmentor().augment(X, {1: np.zeros((3, 1))})
