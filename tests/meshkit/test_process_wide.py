"""A process-wide getter makes its value once, however many threads ask at first."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from meshkit.process_wide import process_wide


def test_the_value_is_made_once_and_shared() -> None:
    started = threading.Barrier(8)
    made: list[object] = []

    @process_wide
    def thing() -> object:
        """A docstring kept."""
        made.append(object())
        return made[-1]

    def ask(_: int) -> object:
        started.wait()
        return thing()

    with ThreadPoolExecutor(8) as pool:
        got = set(map(id, pool.map(ask, range(8))))

    assert len(made) == 1
    assert got == {id(made[0])}
    assert thing() is made[0]
    assert thing.__doc__ == "A docstring kept."
