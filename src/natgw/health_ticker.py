"""The foreground `natgw up`'s health ticks, in a thread of their own.

The supervision loop (natgw.cli.gateway) also checks engines and drift, and those
steps wait on the engines: a wireguard-go whose peer's endpoint has no neighbour
entry (a replica's host lost its link) blocks in its sends, and its UAPI answers
nothing until they fail, seconds later. Ticking health in that loop let such a
wait stall every judgement, so that a live replica, not heard meanwhile, was taken
out too. Here a tick waits on nothing but its own reads, each bounded
(READ_TIMEOUT), and the loop hands the gateway over under `lock` when a reload or
another `up`'s record replaces it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from natgw.failure import one_line

if TYPE_CHECKING:
    from natgw.gateway import Gateway

log = logging.getLogger("natgw")

# Seconds between ticks (natgw.health): a member's silence is seen, and its route
# changed, within two ticks of the fact, so a dead replica leaves the route well
# within 2 x keepalive + 1 s. A tick is one link dump and one status read per member.
INTERVAL = 0.2


class HealthTicker:
    """Calls gateway.check_health() every INTERVAL until stopped, logging its lines."""

    def __init__(self, gateway: Gateway, interval: float = INTERVAL) -> None:
        self.gateway = gateway
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="natgw-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No tick runs inside: for replacing the gateway or its health."""
        with self._lock:
            yield

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                try:
                    lines = self.gateway.check_health()
                except Exception as e:  # noqa: BLE001 - health must keep ticking
                    log.error("health: %s", one_line(e))
                    continue
            for line in lines:
                log.info("%s", line)
