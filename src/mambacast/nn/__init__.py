"""Neural network pieces: the selective scan, the Mamba block and model, output heads."""

from .mamba import LayerState, MambaBlock, MambaModel
from .scan import selective_scan, selective_scan_ref

__all__ = ["LayerState", "MambaBlock", "MambaModel", "selective_scan", "selective_scan_ref"]
