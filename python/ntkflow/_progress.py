"""Progress bars: tqdm when installed (an optional dependency, in the ``plot`` and
``progress`` extras), shown only when asked for and stderr is a terminal; otherwise a
silent stand-in with the same two methods."""

from __future__ import annotations

import sys
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
