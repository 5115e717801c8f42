"""Which bundled sample prices this machine has (`mambacast.data.sources`, the `sample` source).

Tests that read sample prices skip where the package holding them is not installed, and say which one and how
to install it: skfolio is an optional extra (`mambacast[sample]`), and machines set up from wheels alone (the
GPU machines) may lack the data packages.
"""

from __future__ import annotations

import importlib.util

import pytest

from mambacast.data.sources import sample_install_hint

HAS_SKFOLIO = importlib.util.find_spec("skfolio") is not None
HAS_BOKEH = importlib.util.find_spec("bokeh_sampledata") is not None

# AAPL and MSFT after 2013, and 15 more stocks, come only from skfolio's data (1990-2022).
needs_skfolio = pytest.mark.skipif(
    not HAS_SKFOLIO, reason="needs skfolio's sample prices (S&P 500 stocks to 2022), not installed here: "
                            "pip install 'mambacast[sample]'")


# GOOGL, IBM and FB, and every sample symbol's volume and highs/lows, come only from bokeh-sampledata (2000-2013).
needs_bokeh = pytest.mark.skipif(
    not HAS_BOKEH, reason="needs bokeh-sampledata's sample prices (AAPL, MSFT, GOOGL, IBM, FB with volume, "
                          "2000-2013; a core dependency), not installed here: pip install bokeh-sampledata")


def needs_sample(symbol: str) -> pytest.MarkDecorator:
    """Skip unless the sample source can serve `symbol` here; the reason names what to install."""
    hint = sample_install_hint(symbol)
    return pytest.mark.skipif(hint is not None, reason=f"{symbol}'s sample prices are not installed here: {hint}")
