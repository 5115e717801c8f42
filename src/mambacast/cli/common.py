"""What every command shares: the user-error type, exit statuses, one-line messages, checks done before any work."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from ..commit import prove_writable

__all__ = ["CLIError", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NO_MODEL", "EXIT_BAD_MODEL", "Parser", "one_line",
           "check_device", "check_store", "check_output_file", "check_report_dir"]


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


#: exit statuses (docs/prediction.md): 1 some symbols failed to train, 2 a usage or data error (one line on
#: stderr); `predict --strict`: 3 a symbol has no model, 4 a symbol's model exists but cannot be used.
EXIT_FAILED, EXIT_USAGE, EXIT_NO_MODEL, EXIT_BAD_MODEL = 1, 2, 3, 4


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block stays on --help (the README's promise)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(exc: BaseException | str) -> str:
    """The message of a user error on one line (a data error may quote a multi-line value)."""
    text = " ".join(str(exc).split()) if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


def check_device(device: str) -> None:
    """A bad --device, or a bad MAMBACAST_CPU_BF16 (the CPU's training precision), is one line before any data is
    read or epoch trained (not one failure per symbol): the commands run on the CPU or CUDA (the library's
    `resolve_device` also takes other torch devices, e.g. the tests' "meta")."""
    from ..ops.amp import cpu_bf16_autocast
    from ..train.trainer import resolve_device

    if resolve_device(device).type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    try:
        cpu_bf16_autocast()
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def check_store(save_dir: str) -> None:
    """A --save-dir that cannot hold a model is one line before any work."""
    from ..store import ModelStore

    ModelStore(save_dir).ensure_writable()


def check_report_dir(path: str) -> None:
    """The backtest writes its report at the end of a long run: check the folder first."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--report {path} is a file, not a folder")
    check_output_file(str(folder / "report.html"), "--report")


def check_output_file(path: str, flag: str) -> None:
    """A file the command will write at its end must be writable before the work starts."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {path} is a folder; pass a file name")
    folder = target.parent
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        prove_writable(folder)
    except OSError as exc:
        raise CLIError(f"{flag} {path} cannot be written ({exc.strerror or exc})") from None
