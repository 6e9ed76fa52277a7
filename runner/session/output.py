"""llmwizard's own output, written through one writer that outlives its reader.

`llmwizard run DIR | head -3` closes the pipe after three lines; a terminal that is closed
hangs up. Python then raises BrokenPipeError (EPIPE) or OSError EIO at the next print, and again
when the interpreter flushes stdout at exit (exit status 120). Raised inside a run session, that
error would end the follower and leave the ranks training with nobody attached. `SafeOutput`
wraps a text stream: a write or flush that fails because the reader is gone is dropped, the
stream's descriptor is pointed at /dev/null (so the exit flush succeeds), and whoever asked
(`on_gone`) is told once: the run session stops its run with a checkpoint. `reader_gone()` also
notices a closed pipe while nothing is written (a long step, the model loading).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, TextIO, cast

# Errors that say the reader is gone (a closed pipe or socket, a terminal that hung up), as
# opposed to a full disk under a redirect, which only loses the lines.
READER_GONE = frozenset({errno.EPIPE, errno.EIO, errno.ECONNRESET, errno.ENXIO, errno.EBADF})


class SafeOutput:
    """A text stream whose writes never raise: see the module docstring. Everything else (encoding,
    isatty, fileno) is the wrapped stream's, so rich sees the same terminal or pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.gone = False
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @classmethod
    def wrap(cls, stream: IO[str] | SafeOutput) -> SafeOutput:
        """`stream` itself when it is one already, else a new one around it."""
        return stream if isinstance(stream, SafeOutput) else cls(stream)

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except (OSError, ValueError) as exc:
                self._failed(exc)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def on_gone(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` once when the reader goes (at once when it has gone already); the
        returned function unregisters it."""
        with self._lock:
            gone = self.gone
            if not gone:
                self._listeners.append(callback)
        if gone:
            callback()

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    def reader_gone(self) -> bool:
        """Whether the reader has gone, checking a pipe or socket without writing to it (its
        write end reports an error once the read end is closed)."""
        if self.gone:
            return True
        try:
            fd = self.stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):
            return False
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) or not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(fd, 0)  # errors and hang-ups are always reported
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            self._lost()
            return True
        return False

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ValueError) or getattr(exc, "errno", None) in READER_GONE:
            self._lost()
        # Anything else (a full disk under `> file`) loses these lines only.

    def _lost(self) -> None:
        with self._lock:
            if self.gone:
                return
            self.gone = True
            listeners, self._listeners = self._listeners, []
        _to_devnull(self.stream)
        for callback in listeners:
            callback()


def _to_devnull(stream: IO[str]) -> None:
    """Point the stream's descriptor at /dev/null: what is still buffered, and the interpreter's
    flush at exit, then go nowhere instead of failing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def install() -> SafeOutput | None:
    """Route the process's own stdout and stderr through SafeOutput (the CLI does this first, so
    every print, rich's included, goes through it); stdout's writer, None without a stdout. A stream
    something else put in their place (a test's capture) is left as it is."""
    if sys.stderr is sys.__stderr__ and sys.stderr is not None:
        sys.stderr = cast(TextIO, SafeOutput(sys.stderr))
    if sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = cast(TextIO, SafeOutput(sys.stdout))
    return sys.stdout if isinstance(sys.stdout, SafeOutput) else None
