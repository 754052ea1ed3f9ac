"""The login throttle's decisions on a simulated clock (api/auth.py `LoginThrottle`, issue 13):
guesses spread over many addresses never refuse the admin's own address, refusals grow 1, 2,
4 ... seconds per key, the per-name ceiling only delays and is bounded, and failures are
forgotten after the window. The same guarantees over HTTP with 30 real attacking threads are
test_api_hard's (slow); this is the fast tier's copy, in microseconds and without sleeping."""

from __future__ import annotations

from nvr.api.auth import LoginThrottle


class Clock:
    """Seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guess(throttle: LoginThrottle, user: str, client: str) -> float:
    """One wrong password: 0 if it was checked (and failed), else the 429's wait."""
    admission = throttle.admit(user, client)
    if admission.refused:
        return admission.wait
    throttle.failed(user, client)
    return 0.0


def test_guesses_from_many_addresses_never_refuse_the_admins_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    refused: set[str] = set()
    for _round in range(20):
        for i in range(30):
            address = f"127.0.0.{10 + i}"
            if guess(throttle, "root", address) > 0:
                refused.add(address)
        clock.now += 0.2
    assert len(refused) == 30, "every attacking address was throttled"
    # The admin at another address is let through every time: only slowed by the name's
    # ceiling (never past name_max_delay), and a success clears the name's failures.
    first = throttle.admit("root", "127.0.0.2")
    assert not first.refused and 0 < first.delay <= 2.0
    throttle.succeeded("root", "127.0.0.2")
    for _ in range(5):
        admission = throttle.admit("root", "127.0.0.2")
        assert not admission.refused and admission.delay == 0.0
        throttle.succeeded("root", "127.0.0.2")
    # The attackers stay refused: a good login elsewhere launders nothing.
    assert throttle.admit("root", "127.0.0.10").refused


def test_refusals_double_per_failure_up_to_the_limit_and_are_noted_once() -> None:
    clock = Clock()
    throttle = LoginThrottle(free=3, max_delay=8.0, clock=clock)
    for _ in range(3):
        assert guess(throttle, "olga", "10.0.0.1") == 0.0  # the free attempts
    waits = []
    for _ in range(6):
        first = throttle.admit("olga", "10.0.0.1")
        assert first.refused and first.first_refusal
        again = throttle.admit("olga", "10.0.0.1")
        assert again.refused and not again.first_refusal  # audited once per delay
        waits.append(first.wait)
        clock.now += first.wait
        assert guess(throttle, "olga", "10.0.0.1") == 0.0  # admitted once the wait is over
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # Another name from the same address is not refused by the pair (only after
    # free_address failures from that address, a spray of names).
    assert not throttle.admit("ivan", "10.0.0.1").refused


def test_a_spray_of_names_from_one_address_is_refused_by_the_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(free=3, free_address=10, clock=clock)
    for i in range(10):
        assert guess(throttle, f"user{i}", "10.0.0.9") == 0.0
    assert throttle.admit("user99", "10.0.0.9").refused
    assert not throttle.admit("user99", "10.0.0.8").refused


def test_concurrent_attempts_past_the_free_ones_go_one_at_a_time() -> None:
    throttle = LoginThrottle(free=3, clock=Clock())
    admitted = [throttle.admit("olga", "10.0.0.1") for _ in range(40)]
    assert sum(not a.refused for a in admitted) == 3  # in flight counts as failed
    assert all(a.wait >= 1.0 for a in admitted if a.refused)


def test_the_name_ceiling_only_delays_and_is_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_name=10, name_max_delay=2.0, clock=clock)
    delays = []
    for i in range(20):
        admission = throttle.admit("root", f"192.0.2.{i}")
        assert not admission.refused
        delays.append(admission.delay)
        throttle.failed("root", f"192.0.2.{i}")
    assert delays[:10] == [0.0] * 10
    assert delays[10:13] == [0.1, 0.2, 0.4]
    assert max(delays) == 2.0 and delays[-1] == 2.0


def test_failures_are_forgotten_after_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(free=3, window=900.0, clock=clock)
    for _ in range(3):
        guess(throttle, "olga", "10.0.0.1")
    clock.now += 60.0
    assert not throttle.admit("olga", "10.0.0.1").refused  # the 1 s wait is over
    throttle.failed("olga", "10.0.0.1")
    assert throttle.admit("olga", "10.0.0.1").refused
    clock.now += 901.0
    admission = throttle.admit("olga", "10.0.0.1")
    assert not admission.refused and admission.delay == 0.0
