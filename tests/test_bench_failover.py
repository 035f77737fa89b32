"""bench.failover's arithmetic: the runs of losses of a numbered stream around a kill, and
the loss window they give."""

from bench.failover import _later, loss_bursts, loss_window
from lab.net import StreamLog


def stream(n: int, lost: set[int], every: float = 0.01) -> StreamLog:
    return StreamLog(sent_at=[k * every for k in range(n)],
                     received={k for k in range(n) if k not in lost})


def window_of(s: StreamLog, t_kill: float) -> tuple[float | None, int]:
    bursts, before = loss_bursts(s, t_kill)
    return loss_window(bursts), before


def test_the_window_runs_from_the_kill_to_the_first_datagram_through_after_the_losses():
    # Killed at 1.0 s; datagrams 100-349 (sent 1.00-3.49 s) lost; 350 (3.50 s) arrives.
    window, before = window_of(stream(600, set(range(100, 350))), t_kill=1.0)
    assert abs(window - 2.5) < 1e-9 and before == 0


def test_a_flow_that_lost_nothing_has_no_window_and_losses_before_the_kill_are_apart():
    assert window_of(stream(600, set()), t_kill=1.0) == (0.0, 0)
    window, before = window_of(stream(600, {10, 11} | set(range(100, 210))), t_kill=1.0)
    assert before == 2 and abs(window - 1.1) < 1e-9


def test_a_flow_that_never_recovered_has_no_end_to_its_window():
    window, _ = window_of(stream(600, set(range(100, 600))), t_kill=1.0)
    assert window is None


def test_a_datagram_in_flight_at_the_kill_is_the_kills_loss():
    # 95 (sent 0.95 s) was still inside the replica at the kill (1.0 s).
    window, before = window_of(stream(600, {95} | set(range(100, 150))), t_kill=1.0)
    assert before == 0 and abs(window - 0.5) < 1e-9


def test_losses_that_begin_later_are_reported_apart_not_hidden_in_the_window():
    # The kill's run ends at 1.5 s; one datagram lost at 3.2 s (e.g. another flow's
    # burst) and three at 4.0-4.02 s: two other runs, with their times.
    s = stream(600, set(range(100, 150)) | {320} | {400, 401, 402})
    bursts, _ = loss_bursts(s, t_kill=1.0)
    assert abs(loss_window(bursts) - 0.5) < 1e-9
    later = _later({"via": "2a", "bursts": bursts})
    assert [(round(b["start_s"], 2), b["lost"]) for b in later] == [(2.2, 1), (3.0, 3)]
    # Through the survivor every run is another loss.
    assert len(_later({"via": "2b", "bursts": bursts})) == 3
