"""One-line progress for long loops: redrawn in place on a terminal, a line per update otherwise."""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream=None) -> None:
        # sys.stderr as it is now: bound as a default argument it would be the stream of
        # whenever this module was first imported, which a test harness may since have closed.
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = self.stream.isatty()

    def update(self, done: int, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.total - done)
        line = f"[{done}/{self.total}] {text} | {format_duration(elapsed)} elapsed, eta {format_duration(eta)}"
        self.stream.write(f"\r\033[K{line}" if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
