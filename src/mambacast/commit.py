"""Make several files current as one switch: stage them, journal the switch, replace, forget the journal.

A trained model is four files in three folders (weights, metadata, metrics, training plot); one
`os.replace` per file is atomic, four in a row are not. So `commit`:

1. writes every new file under a temporary name beside its final one (same folder, so the later
   rename never crosses a file system) and fsyncs it: until step 2 the current files are untouched,
   and an error or a kill leaves only temporary files, which `ModelStore.clean_temporary_files` removes;
2. writes a journal `<root>/.<NAME>.commit.json` (atomically) listing each temporary file, its final
   name and its SHA-256: this is the commit point;
3. renames the files into place in the journal's order (the metadata last) and deletes the journal.

A process killed during step 3 leaves the journal; `recover` (called by the store before it reads or
writes that name) finishes the renames, so readers see the complete old model or the complete new one.

Fault injection for tests: `MAMBACAST_FAULT=<point>` exits the process at once (`os._exit(70)`, what a
SIGKILL or a power cut leaves) and `MAMBACAST_FAULT=<point>:raise` raises `OSError` there, at the points
"commit.staging" (after the first file of several is staged) and "commit.switching" (after the first
file was renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StagedFile", "TMP_MARK", "atomic_write_bytes", "commit", "discard", "fault_point", "journal_path",
           "prove_writable", "recover", "stage"]

log = logging.getLogger(__name__)

#: every temporary file's name holds this mark (cleaners look for it)
TMP_MARK = ".tmp-"
_FAULT_ENV = "MAMBACAST_FAULT"


def fault_point(name: str) -> None:
    """Simulate a crash (or an I/O error with ':raise') at `name` when MAMBACAST_FAULT asks for it (tests)."""
    wanted = os.environ.get(_FAULT_ENV, "")
    if wanted == name:
        os._exit(70)
    if wanted == f"{name}:raise":
        raise OSError(f"injected fault at {name} ({_FAULT_ENV})")


def prove_writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in `folder`. The probe is an unnamed file where the OS has them
    (Linux's O_TMPFILE), else one unlinked at once: a process killed mid-probe leaves nothing behind (a named
    probe file did, which a resumed run then had to find and clean)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def _fsync_dir(folder: Path) -> None:
    """Persist a rename: fsync the folder (best effort; some file systems cannot)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temporary(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class StagedFile:
    """A new file written under a temporary name beside `final`, waiting for `commit`."""

    final: Path
    tmp: Path
    sha256: str


def stage(path: Path, data: bytes) -> StagedFile:
    """Write `data` to a temporary file beside `path` (fsynced); `path` itself is not touched."""
    return StagedFile(Path(path), _write_temporary(Path(path), data), hashlib.sha256(data).hexdigest())


def discard(staged: list[StagedFile]) -> None:
    """Remove staged files that will not be committed."""
    for s in staged:
        s.tmp.unlink(missing_ok=True)


def journal_path(root: Path, name: str) -> Path:
    return Path(root) / f".{name}.commit.json"


def commit(root: Path, name: str, staged: list[StagedFile]) -> None:
    """Rename every staged file into place as one switch (see the module docstring); `staged` in switch order."""
    # Absolute paths on both sides: tempfile makes the staged names absolute, while the store's root (the CLI's
    # default models/mamba) may be relative.
    root = Path(os.path.abspath(root))
    entries = [{"tmp": str(_absolute(s.tmp).relative_to(root)), "final": str(_absolute(s.final).relative_to(root)),
                "sha256": s.sha256} for s in staged]
    atomic_write_bytes(journal_path(root, name), json.dumps({"files": entries}, indent=1).encode())
    _fsync_dir(root)
    _apply(root, name)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def recover(root: Path, name: str) -> bool:
    """Finish a switch a killed process left half done; True if there was one. Raises OSError if it cannot."""
    if not journal_path(root, name).exists():
        return False
    log.warning("%s: finishing the model switch an interrupted run left in %s", name, root)
    _apply(Path(root), name)
    return True


def _apply(root: Path, name: str) -> None:
    journal = journal_path(root, name)
    try:
        entries = json.loads(journal.read_text())["files"]
    except FileNotFoundError:   # another process finished it meanwhile
        return
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise OSError(f"{journal} is not a readable commit journal ({exc}); delete it and retrain {name}") from None
    folders = set()
    for i, entry in enumerate(entries):
        tmp, final = root / entry["tmp"], root / entry["final"]
        try:
            os.replace(tmp, final)
        except FileNotFoundError:   # renamed before a crash (or by a concurrent recovery): check it is there
            if not final.is_file() or hashlib.sha256(final.read_bytes()).hexdigest() != entry["sha256"]:
                raise OSError(f"{journal}: {tmp} is gone and {final} is not the file it recorded; "
                              f"delete the journal and retrain {name}") from None
        folders.add(final.parent)
        if i == 0 and len(entries) > 1:
            fault_point("commit.switching")
    for folder in folders:
        _fsync_dir(folder)
    journal.unlink(missing_ok=True)
    _fsync_dir(root)
