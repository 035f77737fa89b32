"""bench.failover's arithmetic: the loss window of a numbered stream around a kill."""

from bench.failover import loss_window
from lab.net import StreamLog


def stream(n: int, lost: set[int], every: float = 0.01) -> StreamLog:
    return StreamLog(sent_at=[k * every for k in range(n)],
                     received={k for k in range(n) if k not in lost})


def test_the_window_runs_from_the_kill_to_the_first_datagram_through_after_the_losses():
    # Killed at 1.0 s; datagrams 100-349 (sent 1.00-3.49 s) lost; 350 (3.50 s) arrives.
    window, before = loss_window(stream(600, set(range(100, 350))), t_kill=1.0)
    assert abs(window - 2.5) < 1e-9 and before == 0


def test_a_flow_that_lost_nothing_has_no_window_and_losses_before_the_kill_are_apart():
    assert loss_window(stream(600, set()), t_kill=1.0) == (0.0, 0)
    window, before = loss_window(stream(600, {10, 11} | set(range(200, 210))), t_kill=1.0)
    assert before == 2 and abs(window - 1.1) < 1e-9


def test_a_flow_that_never_recovered_has_no_end_to_its_window():
    window, _ = loss_window(stream(600, set(range(100, 600))), t_kill=1.0)
    assert window is None


def test_a_datagram_in_flight_at_the_kill_is_the_kills_loss():
    # 95 (sent 0.95 s) was still inside the replica at the kill (1.0 s).
    window, before = loss_window(stream(600, {95} | set(range(100, 150))), t_kill=1.0)
    assert before == 0 and abs(window - 0.5) < 1e-9
