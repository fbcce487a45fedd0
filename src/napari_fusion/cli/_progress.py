"""Progress bar of the command line (tqdm on stderr), as a fusion ``progress`` callback."""

from __future__ import annotations

import sys


class TqdmProgress:
    """Progress callback drawing a tqdm bar on stderr (nothing when not ``enabled``)."""

    def __init__(self, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=desc, unit="%", leave=False, file=sys.stderr, miniters=1)

    def __call__(self, done: float, total: float, message: str = "") -> None:
        if self.bar is None:
            return
        pct = round(100 * done / total) if total else 100
        if message:  # before the redraw below, so that the bar shows this step, not the last one
            self.bar.set_postfix_str(message, refresh=False)
        if pct < self.bar.n:  # a new phase (e.g. a tiled run's whole-image passes, then the tiles)
            # start the bar afresh: its rate and time left are then those of this phase (they were
            # the whole run's average, so a 13-minute pass showed 4 minutes left at its start), and
            # it redraws (tqdm redraws on ``update`` only once ``n`` has moved past the last drawn
            # ``n``; the bar stayed frozen for every pass after the first until both were reset)
            self.bar.reset(total=100)
        self.bar.update(max(0, pct - self.bar.n))

    def describe(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc)

    def close(self):
        if self.bar is not None:
            self.bar.close()
