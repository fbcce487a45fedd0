"""Progress bar of the command line (tqdm on stderr), as a fusion ``progress`` callback."""

from __future__ import annotations

import sys


class TqdmProgress:
    """Progress callback drawing a tqdm bar on stderr (nothing when not ``enabled``)."""

    def __init__(self, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=desc, unit="%", leave=False, file=sys.stderr)

    def __call__(self, done: float, total: float, message: str = "") -> None:
        if self.bar is None:
            return
        pct = round(100 * done / total) if total else 100
        if pct < self.bar.n:  # a new phase (e.g. a tiled run's whole-image passes, then the tiles)
            self.bar.n = pct
            self.bar.refresh()
        self.bar.update(max(0, pct - self.bar.n))
        if message:
            self.bar.set_postfix_str(message, refresh=False)

    def describe(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc)

    def close(self):
        if self.bar is not None:
            self.bar.close()
