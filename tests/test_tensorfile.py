"""`mambacast.tensorfile`: our safetensors writer against the safetensors library's reader, the layout the format
asks for, the content digest, and host copies (their CUDA side is in tests/test_cuda.py)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load

from mambacast.store import ModelStore, StoreError
from mambacast.tensorfile import DTYPE_NAMES, content_digest, host_copies, serialize, serialize_with_digest


def every_kind() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 6, generator=g, dtype=torch.float64)
    return {"f64": base, "f32": torch.randn(3, 4, generator=g), "scalar": torch.tensor(7.5),
            "bf16": torch.randn(2, 3, generator=g).bfloat16(), "f16": torch.randn(3, generator=g).half(),
            "i64": torch.arange(6).view(2, 3), "i32": torch.tensor([1, -2], dtype=torch.int32),
            "i16": torch.tensor([3], dtype=torch.int16), "i8": torch.tensor([-4, 5], dtype=torch.int8),
            "u8": torch.tensor([0, 255], dtype=torch.uint8), "mask": torch.tensor([True, False, True]),
            "empty": torch.empty(0, 3), "strided": base[:, 1:5:2].t(), "z.last": torch.ones(1)}


def test_the_library_reads_back_every_dtype_and_shape(tmp_path):
    tensors = every_kind()
    assert {t.dtype for t in tensors.values()} == set(DTYPE_NAMES)
    data = serialize(tensors, {"note": "x"})
    loaded = st_load(data)
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape and torch.equal(loaded[k], t), k
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="pt") as f:          # the memory-mapped reader too
        assert f.metadata() == {"note": "x"}
        assert torch.equal(f.get_tensor("strided"), tensors["strided"])


def test_layout_is_aligned_and_gapless():
    data = serialize(every_kind())
    length = int.from_bytes(data[:8], "little")
    assert length % 8 == 0
    header = json.loads(data[8:8 + length])
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 8 - length
    assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))     # no gap, no overlap
    sizes = {name: torch.tensor([], dtype=dt).element_size() for dt, name in DTYPE_NAMES.items()}
    assert all(v["data_offsets"][0] % sizes[v["dtype"]] == 0 for v in header.values())


def test_digest_covers_tensors_and_info_not_the_metadata():
    tensors = {"w": torch.randn(3), "step": torch.tensor(4.0)}
    data = serialize_with_digest(tensors, '{"epoch": 1}')
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    meta = header.pop("__metadata__")
    assert meta["mambacast"] == '{"epoch": 1}'
    assert meta["sha256"] == content_digest(header, data[8 + length:], '{"epoch": 1}')
    assert meta["sha256"] != content_digest(header, data[8 + length:], '{"epoch": 2}')


def test_a_store_checkpoint_round_trips_and_refuses_an_edit(tmp_path):
    store = ModelStore(tmp_path)
    path = tmp_path / "state.safetensors"
    tensors = every_kind()
    store.save_tensors(path, tensors, {"epoch": 3, "best": float("inf")})
    loaded, info = store.load_tensors(path)
    assert info == {"epoch": 3, "best": float("inf")}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1                                           # one bit of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="does not match its own SHA-256"):
        store.load_tensors(path)


def test_a_dtype_the_format_lacks_is_refused_by_name():
    with pytest.raises(TypeError, match="'c' has dtype torch.complex64"):
        serialize({"c": torch.zeros(2, dtype=torch.complex64)})


def test_host_copies_leave_cpu_tensors_in_place():
    t = {"a": torch.randn(3), "b": torch.randn(4, 2).t()}
    got = host_copies(t)
    assert got["a"].data_ptr() == t["a"].data_ptr() and got["b"].is_contiguous()
    assert torch.equal(got["b"], t["b"]) and list(got) == ["a", "b"]


def test_a_checkpoint_written_by_safetensors_own_writer_still_loads(tmp_path):
    """Checkpoints of earlier versions (safetensors' writer, the digest written over a placeholder of its length)
    load and verify as before: a run interrupted before an upgrade resumes after it."""
    from safetensors.torch import save as st_save

    tensors, info = {"w": torch.randn(3, 2), "step": torch.tensor(9.0)}, '{"epoch": 4}'
    placeholder = "0" * 64
    data = bytearray(st_save(tensors, metadata={"mambacast": info, "sha256": placeholder}))
    length = int.from_bytes(data[:8], "little")
    entries = {k: v for k, v in json.loads(data[8:8 + length]).items() if k != "__metadata__"}
    digest = content_digest(entries, bytes(data[8 + length:]), info)
    slot = bytes(data[:8 + length]).find(placeholder.encode())
    data[slot:slot + 64] = digest.encode()
    path = tmp_path / "old.safetensors"
    path.write_bytes(bytes(data))
    loaded, got_info = ModelStore(tmp_path).load_tensors(path)
    assert got_info == {"epoch": 4} and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
