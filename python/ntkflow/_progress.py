"""Progress bars: tqdm when installed (an optional dependency, in the ``plot`` and
``progress`` extras), shown only when asked for and stderr is a terminal; otherwise a
silent stand-in with the same two methods. ``TrajectoryProgress`` is the bar of one
``simulate`` call, fed by the compiled core."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    """A context manager with ``update(n)``; silent unless ``enabled`` and stderr is a
    terminal and tqdm can be imported. ``initial``: steps already done (a resumed sweep),
    counted in the bar but not in its rate and time estimate."""
    if not enabled or not sys.stderr.isatty():
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Silent()
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, leave=False,
                dynamic_ncols=True)


class TrajectoryProgress:
    """The progress display of one ``simulate`` call, as a context manager whose value is
    the hook the core calls with the number of finished trajectories (or None: no hook).

    ``enabled``: None shows a bar when stderr is a terminal, True whatever stderr is, False
    never. Either way the bar appears only once the call has run ``DELAY_S`` seconds, so
    short calls print nothing, and only if tqdm can be imported (silently nothing
    otherwise). The core calls the hook from its cancel poll (about every 0.1 s, holding
    the GIL anyway) and once at the end; it never influences a result.
    """

    DELAY_S = 2.0

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.total = total
        self.enabled = enabled
        self.bar: Any = None
        self.unavailable = False  # tqdm could not be imported
        self.shown = 0
        self.start = 0.0

    def __enter__(self) -> Callable[[int], None] | None:
        if self.enabled is False or (self.enabled is None and not sys.stderr.isatty()):
            return None
        self.start = time.monotonic()
        return self.update

    def update(self, done: int) -> None:
        if self.bar is None:
            if self.unavailable or time.monotonic() - self.start < self.DELAY_S:
                return
            try:
                from tqdm import tqdm
            except ImportError:
                self.unavailable = True
                return
            self.bar = tqdm(total=self.total, desc="simulate", unit="traj", file=sys.stderr,
                            leave=False, dynamic_ncols=True)
        if done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
