#!/usr/bin/env python
"""The guide's entry point: `python scripts/train_mamba_models.py --test` (same flags as `mambacast train`).

It also re-exports the names the guide imports from this script:
`from scripts.train_mamba_models import TrainingCallbacks, MetricsTracker, train_single_symbol`.
"""

import sys

from mambacast.cli import main
from mambacast.train import MetricsTracker, TrainingCallbacks, train_single_symbol

__all__ = ["MetricsTracker", "TrainingCallbacks", "train_single_symbol"]

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
