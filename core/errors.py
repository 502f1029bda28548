"""Typed errors. Each also subclasses the built-in a caller would naturally catch
(PyAV's habit: ``class EOFError(FFmpegError, builtins.EOFError)``), and the CLI turns any
``HepascopeError`` into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class HepascopeError(Exception):
    """Base of every error hepascope raises on purpose."""


class ConfigError(HepascopeError, ValueError):
    """A configuration file or command-line value is invalid."""


class SourceError(HepascopeError, OSError):
    """A frame source could not be opened or read."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The file or device named by a source spec does not exist."""


class SourceTimeoutError(SourceError, TimeoutError):
    """A source did not open or deliver a frame within its timeout."""


class SourceFormatError(SourceError):
    """The input exists but is not something the source can decode (not a video, no video
    stream, corrupt data)."""


class SourceWriterGoneError(SourceError, ConnectionAbortedError):
    """The process writing a ``shm:`` source's ring died without closing it: no more frames
    will come (rather than waiting for them forever)."""


class ModelError(HepascopeError, ValueError):
    """A model file is missing, unreadable or lacks what the pipeline needs."""


class ModelInputError(ModelError):
    """The model's inputs do not match the frames the pipeline produces."""


class ModelOutputError(ModelError):
    """The model's outputs could not be shown (NaN, Inf, not probabilities) too many times
    in a row: a fault like a crash."""


class RingError(HepascopeError, RuntimeError):
    """The shared-memory frame ring could not be created, attached or written."""


class PublishError(HepascopeError, ConnectionError):
    """The results channel could not be bound or connected."""


class DataError(HepascopeError, ValueError):
    """A training/evaluation dataset is missing, malformed or cannot be decoded (a bad
    manifest row, an unreadable image, a DICOM whose pixel data cannot be decoded)."""


def guard_main(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a ``python -m`` tool's ``main``: a ``HepascopeError`` becomes one line on stderr
    and exit status 2 (the ``hepascope`` command's rule), never a traceback; Ctrl-C is 130."""

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> int:
        from hepascope.core.logs import error_line  # stdlib-only, like this module

        try:
            return int(main(*args, **kwargs))
        except HepascopeError as e:
            print(error_line(str(e)), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130

    return guarded
