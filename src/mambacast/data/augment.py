"""Training-set augmentation (the guide's `DataAugmentor`).

Apply it to the training split only, after scaling: validation must measure the model on data
as it is. Augmented windows keep their original targets: the distortions are meant to be small
enough not to change what happens next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from .errors import DataError

__all__ = ["DataAugmentor"]

logger = logging.getLogger(__name__)

_WARP_KNOTS = 4  # interior knots of the magnitude-warping curve: a few slow bumps per window


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise DataError(f"{name}={value!r} is invalid: must be a finite number >= 0")
    return float(value)


class DataAugmentor:
    """Append distorted copies of randomly chosen training windows.

    Each copy gets, in turn: Gaussian noise (std `noise_std`, in the units of `X`: standardised
    features), magnitude warping (multiplied by a smooth random curve over time, one per
    feature, mean 1 and std `warp_std` at its knots) and feature dropout (each feature zeroed for
    the whole window with probability `dropout_rate`). Set a parameter to 0 to disable that step.

    Args:
        augmentation_rate: copies to add, as a fraction of the samples (0.5 adds ``round(0.5 * n)``).
        seed: seeds the generator created here; two augmentors with the same seed produce the same
            outputs call for call, while successive calls of one augmentor differ (fresh
            distortions every epoch).
    """

    def __init__(self, augmentation_rate: float = 0.5, noise_std: float = 0.01, warp_std: float = 0.1,
                 dropout_rate: float = 0.1, seed: int | None = None) -> None:
        self.augmentation_rate = _non_negative("augmentation_rate", augmentation_rate)
        self.noise_std = _non_negative("noise_std", noise_std)
        self.warp_std = _non_negative("warp_std", warp_std)
        self.dropout_rate = _non_negative("dropout_rate", dropout_rate)
        if self.dropout_rate > 1:
            raise DataError(f"dropout_rate={dropout_rate!r} is invalid: must be a probability in [0, 1]")
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def augment(self, X: np.ndarray, y: Mapping[int, np.ndarray]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Originals followed by the augmented copies; the inputs are never modified.

        Args:
            X: ``(n_samples, seq_len, n_features)`` windows (a read-only view is fine).
            y: ``{horizon: (n_samples, 1)}`` targets.

        Returns:
            ``(X_aug, y_aug)``: new float32 array ``(n_samples + n_new, seq_len, n_features)`` and
            ``{horizon: (n_samples + n_new, 1)}`` with each copy's targets equal to its source's.
        """
        if np.ndim(X) != 3:
            raise DataError(f"augment needs X of shape (n_samples, seq_len, n_features), got {np.shape(X)}")
        n = len(X)
        for h, target in y.items():
            if len(target) != n:
                raise DataError(f"y[{h}] has {len(target)} samples but X has {n}; pass matching X and y")
        n_new = round(self.augmentation_rate * n)
        if n_new == 0:
            return np.array(X, dtype=np.float32), {h: np.array(v) for h, v in y.items()}
        # Without replacement while possible, so each window is copied at most once per call.
        idx = np.sort(self._rng.choice(n, size=n_new, replace=n_new > n))
        copies = np.asarray(X, dtype=np.float32)[idx]  # fancy indexing: a new array, X untouched
        copies = self._distort(copies)
        logger.debug("augmented %d of %d samples", n_new, n)
        X_aug = np.concatenate([np.asarray(X, dtype=np.float32), copies])
        y_aug = {h: np.concatenate([np.asarray(v), np.asarray(v)[idx]]) for h, v in y.items()}
        return X_aug, y_aug

    def _distort(self, copies: np.ndarray) -> np.ndarray:
        """Noise, warping and dropout applied to ``(n_new, seq_len, n_features)`` (in place, it is ours)."""
        n_new, seq_len, n_features = copies.shape
        if self.noise_std:
            copies += self._rng.normal(0.0, self.noise_std, copies.shape).astype(np.float32)
        if self.warp_std:
            copies *= self._warp_curves(n_new, seq_len, n_features)
        if self.dropout_rate:
            keep = self._rng.random((n_new, 1, n_features)) >= self.dropout_rate
            copies *= keep.astype(np.float32)
        return copies

    def _warp_curves(self, n_new: int, seq_len: int, n_features: int) -> np.ndarray:
        """Smooth curves ``(n_new, seq_len, n_features)``: knots ~ N(1, warp_std) joined by cosine easing
        (continuous with a continuous slope at the knots)."""
        knots = self._rng.normal(1.0, self.warp_std, (n_new, _WARP_KNOTS + 2, n_features))
        position = np.linspace(0.0, _WARP_KNOTS + 1, seq_len)
        left = np.minimum(position.astype(int), _WARP_KNOTS)
        frac = position - left
        ease = ((1.0 - np.cos(np.pi * frac)) / 2.0)[None, :, None]
        curves = knots[:, left, :] * (1.0 - ease) + knots[:, left + 1, :] * ease
        return curves.astype(np.float32)
