"""Tensors to safetensors bytes in one piece, from any device: the writer of the store's checkpoints.

A training-state checkpoint (about 210 tensors: weights, Adam's two moments and step count per parameter) is
written every epoch by every symbol. Through `safetensors.torch.save` (which converts each tensor to NumPy on
its own, 3.3 ms), a placeholder digest written over afterwards and a second SHA-256 of the whole file, one cost
13-14 ms on the development CPU and 30 ms on the H100 machine's (benchmarks/bench_gpu.py, section checkpoint).
`serialize` writes the same format (the header's JSON, then every tensor's bytes,
https://github.com/huggingface/safetensors#format) from one concatenation of the tensors' bytes, made on their
device and brought to the host in one transfer per device, and `serialize_with_digest` computes the digest
before the header is written: 2.5 ms, 5.4-6.2 ms for the whole checkpoint with its write.
`safetensors.torch.load` reads the files back.

Tensors are laid out largest element size first, so each one's bytes start aligned to its element size (the
header is padded to a multiple of 8 bytes, as safetensors' own writer does).
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

__all__ = ["serialize", "serialize_with_digest", "host_copies", "content_digest", "DTYPE_NAMES"]

# torch dtype -> the format's dtype name
DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


def _bytes_view(t: torch.Tensor) -> torch.Tensor:
    """t's values as a flat uint8 tensor on t's device (a view when t is contiguous)."""
    return t.detach().reshape(-1).view(torch.uint8)


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of `tensors` (on any devices; dtypes in DTYPE_NAMES) with string `metadata`."""
    entries, pieces = _layout(tensors)
    return _file(entries, _host_bytes(pieces), metadata)


def serialize_with_digest(tensors: dict[str, torch.Tensor], info_text: str) -> bytes:
    """`serialize` with metadata {"mambacast": info_text, "sha256": content_digest(...)}: a file that can tell
    whether it was modified (`ModelStore.load_tensors`)."""
    entries, pieces = _layout(tensors)
    data = _host_bytes(pieces)
    return _file(entries, data, {"mambacast": info_text, "sha256": content_digest(entries, data, info_text)})


def content_digest(entries: dict[str, Any], data: bytes | memoryview, info_text: str) -> str:
    """SHA-256 of what a tensors file says: its tensor entries (names, dtypes, shapes, offsets), the tensors'
    bytes and an info text. The store keeps it in the file's own metadata, so it leaves the metadata out."""
    h = hashlib.sha256(json.dumps(entries, sort_keys=True).encode())
    h.update(data)
    h.update(info_text.encode())
    return h.hexdigest()


def host_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with the values of `tensors` (same keys, order, shapes and dtypes), each with its
    own memory; tensors on an accelerator come over in one transfer per device. CPU tensors are returned as they
    are (made contiguous)."""
    out = {k: v.detach().contiguous() for k, v in tensors.items() if v.device.type == "cpu"}
    away = [k for k in tensors if k not in out]
    if away:
        flat = _host_bytes([(k, tensors[k]) for k in away])
        offset = 0
        for k in away:
            t = tensors[k]
            n = t.numel() * t.element_size()
            out[k] = torch.frombuffer(bytearray(flat[offset:offset + n]), dtype=torch.uint8).view(t.dtype) \
                .view(t.shape) if n else torch.empty(t.shape, dtype=t.dtype)   # a bytearray each: own memory
            offset += n
    return {k: out[k] for k in tensors}


def _layout(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], list[tuple[str, torch.Tensor]]]:
    """(header entries, (name, tensor) in file order): largest element size first, then by name."""
    if sys.byteorder != "little":   # the format is little-endian and the bytes are copied as they lie in memory
        raise RuntimeError("mambacast writes tensor files on little-endian machines only")
    for k, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {k!r} has dtype {t.dtype}, which the store does not write")
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    entries, offset = {}, 0
    for k in order:
        t = tensors[k]
        n = t.numel() * t.element_size()
        entries[k] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    return entries, [(k, tensors[k]) for k in order]


def _file(entries: dict[str, Any], data: memoryview, metadata: dict[str, str] | None) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    header.update(entries)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join((len(text).to_bytes(8, "little"), text, data))


def _host_bytes(pieces: list[tuple[str, torch.Tensor]]) -> memoryview:
    """The tensors' bytes one after another, in the order given, on the host: each accelerator's tensors are
    concatenated there and brought over in one transfer (each transfer waits for the device)."""
    views = [_bytes_view(t) for _, t in pieces]
    away: dict[torch.device, list[int]] = {}
    for i, v in enumerate(views):
        if v.device.type != "cpu":
            away.setdefault(v.device, []).append(i)
    for idx in away.values():
        flat = torch.cat([views[i] for i in idx]).cpu()
        for i, part in zip(idx, flat.split([views[i].numel() for i in idx]), strict=True):
            views[i] = part
    return memoryview(torch.cat(views).numpy() if views else b"").cast("B")
