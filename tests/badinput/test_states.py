"""Damaged training states: `train --resume` refuses them in one line that offers a fresh start (finding 6),
and a fresh start (no --resume) replaces them."""

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .conftest import TINY, assert_one_line, run_cli

RESUME = ["train", "--symbols", "MSFT", "--resume", "--quiet", *TINY]


def header(data: bytes) -> dict:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])


def rewrite(change_tensors=None, change_meta=None):
    def damage(path):
        data = path.read_bytes()
        tensors, meta = st_load(data), header(data)["__metadata__"]
        if change_tensors:
            tensors = change_tensors(tensors)
        if change_meta:
            meta = change_meta(meta)
        path.write_bytes(st_save(tensors, metadata=meta))
    return damage


def edit_epoch(meta):
    info = json.loads(meta["mambacast"])
    info["epoch"] = 40
    return {**meta, "mambacast": json.dumps(info)}


DAMAGE = {
    "zeroed tensors": (rewrite(lambda t: {k: torch.zeros_like(v) for k, v in t.items()}), "its own SHA-256"),
    "epoch edited": (rewrite(change_meta=edit_epoch), "its own SHA-256"),
    "no hash (old format)": (rewrite(change_meta=lambda m: {"mambacast": m["mambacast"]}), "no integrity hash"),
    "zero bytes": (lambda p: p.write_bytes(b"\0" * p.stat().st_size), "not a readable safetensors file"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "not a readable safetensors file"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable safetensors file"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is a folder"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_refuses_a_damaged_state(good, case):
    damage, match = DAMAGE[case]
    path = good.store.state_path("MSFT")
    damage(path)
    good.refresh()
    code, out, err = run_cli([*RESUME, "--save-dir", str(good.root)])
    assert_one_line(code, out, err, 1, match)
    assert "cannot resume" in err and "to start afresh" in err and "training_state.safetensors" in err
    assert good.unchanged()


def test_a_fresh_start_replaces_a_damaged_state(good):
    DAMAGE["zeroed tensors"][0](good.store.state_path("MSFT"))
    code, out, err = run_cli(["train", "--symbols", "MSFT", "--quiet", "--save-dir", str(good.root), *TINY])
    assert code == 0 and "Traceback" not in err, err
    assert good.store.is_complete("MSFT")
    assert good.store.load_tensors(good.store.state_path("MSFT"))[1]["epoch"] == 0


def test_resume_continues_from_a_good_state(good):
    """The control: the untouched state resumes (nothing left to train: its one epoch is done)."""
    code, out, err = run_cli([*RESUME[:-len(TINY) - 1], "--save-dir", str(good.root), *TINY])
    assert code == 0, err
    assert "[MSFT] resumed from epoch 1" in out and "[MSFT] epoch" not in out
    assert good.store.is_complete("MSFT")
