"""natgw_pipe_* metrics of the pipes the foreground `natgw up` serves.

    natgw_pipe_connections_total{pipe,peer,result}   counter
        peer: who asked (a peer's name, or "local" for the pipe's own port);
        result: ok, or why not (natgw.pipes.protocol.Status, lower case);
        pipe "(unknown)": requests for a pipe this file does not name
    natgw_pipe_active_connections{pipe}              gauge
    natgw_pipe_bytes_total{pipe,direction}           counter
        direction: upstream (toward the far end) or downstream (back)
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from natgw.pipes.server import PipeServer


class PipeCollector(Collector):
    def __init__(self, server: PipeServer) -> None:
        self.server = server

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        connections, nbytes, active = self.server.counters()
        total = CounterMetricFamily("natgw_pipe_connections",
                                    "Connections asked of a pipe, by who asked and the result",
                                    labels=["pipe", "peer", "result"])
        for (pipe, peer, result), n in sorted(connections.items()):
            total.add_metric([pipe, peer, result], n)
        gauge = GaugeMetricFamily("natgw_pipe_active_connections",
                                  "Connections a pipe relays now", labels=["pipe"])
        for pipe, n in sorted(active.items()):
            gauge.add_metric([pipe], n)
        moved = CounterMetricFamily("natgw_pipe_bytes", "Bytes a pipe relayed, per direction",
                                    labels=["pipe", "direction"])
        for (pipe, direction), n in sorted(nbytes.items()):
            moved.add_metric([pipe, direction], n)
        yield from (total, gauge, moved)
