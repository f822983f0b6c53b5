"""The request budget: unlimited until 429s set a rate, a hard cap, a share kept for polls."""

from __future__ import annotations

import itertools
import math
import random

import anyio
import anyio.lowlevel
import pytest

from wan_async._ratelimit import RateBudget, RequestKind

pytestmark = pytest.mark.anyio

#: Event-loop turns with no clock activity after which every task is taken to be asleep.
SETTLE = 8


class ManualClock:
    """A clock that moves only when told to, or when a sleep jumps it to the sleep's end.

    Several tasks may sleep at once: the earliest end comes first, once no task has touched
    the clock for :data:`SETTLE` turns of the event loop (all the others are asleep or blocked
    too), so two sleepers' waits overlap as on a real clock instead of adding up.
    """

    scale = 1.0

    def __init__(self) -> None:
        self.now = 1000.0
        self._ends: list[float] = []
        self._activity = 0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        self._activity += 1
        return self.now

    async def sleep(self, seconds: float) -> None:
        end = self.now + max(0.0, seconds)
        self._ends.append(end)
        self._activity += 1
        try:
            while self.now < end:
                seen = self._activity
                for _ in range(SETTLE):
                    await anyio.lowlevel.checkpoint()
                if self._activity == seen and end == min(self._ends):
                    self.now = end
                    self._activity += 1
        finally:
            self._ends.remove(end)


class Limiter:
    """The gateway's rate limiter as a test sees it: a token bucket that answers 429 when empty."""

    def __init__(self, clock: ManualClock, *, rate: float, burst: float) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = clock.now

    def limited(self) -> bool:
        """Whether a request arriving now is refused."""
        now = self._clock.now
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return False
        return True


async def paced(
    budget: RateBudget, clock: ManualClock, n: int, *, every: float, limited: bool = False
) -> list[float]:
    """Ask ``n`` times, one request every ``every`` clock seconds or as fast as granted, if
    slower; answer each with ``limited``; return the grant times."""
    start = clock.now
    granted = []
    for i in range(n):
        clock.now = max(clock.now, start + (i + 1) * every)
        await budget.acquire()
        granted.append(clock.now)
        budget.answered(limited=limited)
    return granted


async def test_unlimited_by_default_acquire_never_waits() -> None:
    """Without a cap or any 429, a thousand requests of both kinds pass at one instant."""
    clock = ManualClock()
    budget = RateBudget(cap=None, clock=clock)
    for i in range(1000):
        await budget.acquire("submit" if i % 3 else "poll")
        budget.answered(limited=False)
    assert clock.now == 1000.0
    assert budget.stats.granted == 1000
    assert budget.stats.current_rate == math.inf


async def test_a_cap_is_a_hard_cap() -> None:
    """At a cap of 10/s a greedy client gets its burst of 10, then exactly 10 requests/s."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    granted = await paced(budget, clock, 210, every=0.0)
    assert granted[9] == 1000.0  # the burst: one cap's worth at once
    assert granted[-1] - 1000.0 == pytest.approx(20.0)
    for earlier, later in itertools.pairwise(granted[9:]):
        assert later - earlier == pytest.approx(0.1)


async def test_recovery_never_passes_the_cap() -> None:
    """After a back-off, a long calm climbs back to the cap and stops there."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    await paced(budget, clock, 40, every=0.1, limited=True)
    assert budget.stats.current_rate < 10.0
    await paced(budget, clock, 2000, every=0.1)
    assert budget.stats.current_rate == 10.0


@pytest.mark.parametrize("seed", range(5))
async def test_a_steady_4_percent_of_429s_never_lowers_the_rate(seed: int) -> None:
    """2,000 answers of which a random 4 % are limited leave the budget unlimited throughout."""
    clock = ManualClock()
    budget = RateBudget(cap=None, clock=clock)
    rng = random.Random(seed)
    for i in range(2000):
        clock.now = 1000.0 + i * 0.05
        await budget.acquire()
        budget.answered(limited=rng.random() < 0.04)
        assert budget.stats.current_rate == math.inf
    assert 40 <= budget.stats.throttles <= 120
    assert budget.stats.lowest_rate == math.inf


@pytest.mark.parametrize(("demand", "burst"), [(20.0, 5.0), (20.0, 1.0), (100.0, 1.0)])
async def test_a_limiter_at_5_per_second_sets_the_rate(demand: float, burst: float) -> None:
    """A client wanting ``demand``/s behind a 5/s limiter soon drops to it and stays near."""
    clock = ManualClock()
    budget = RateBudget(cap=None, clock=clock)
    limiter = Limiter(clock, rate=5.0, burst=burst)
    answers: list[tuple[float, bool]] = []
    highest_late = 0.0
    for i in range(3000):
        clock.now = max(clock.now, 1000.0 + i / demand)
        await budget.acquire()
        limited = limiter.limited()
        budget.answered(limited=limited)
        answers.append((clock.now, limited))
        if i == 200:
            assert budget.stats.lowest_rate <= 6.0
        if i >= 1000:
            highest_late = max(highest_late, budget.stats.current_rate)
    late = answers[1000:]
    elapsed = late[-1][0] - late[0][0]
    # Halving on each push-back and climbing linearly, the rate saws between about 2.5 and 6.
    assert len(late) / elapsed >= 2.5
    assert sum(limited for _, limited in late) / len(late) < 0.1
    assert highest_late <= 6.5


async def test_recovery_is_linear_once_429s_stop() -> None:
    """After one back-off from 20/s to 10/s, every 16 calm answers add 1.25/s until 40/s, and
    then the budget is unlimited again."""
    clock = ManualClock()
    budget = RateBudget(cap=None, clock=clock)
    await paced(budget, clock, 32, every=0.05)
    await paced(budget, clock, 9, every=0.05, limited=True)
    assert budget.stats.current_rate == pytest.approx(10.0)
    changes: list[tuple[int, float]] = []  # (answer, the rate it set)
    for answer in range(1000):
        before = budget.stats.current_rate
        await paced(budget, clock, 1, every=0.0)
        if budget.stats.current_rate != before:
            changes.append((answer, budget.stats.current_rate))
    assert [rate for _, rate in changes] == pytest.approx(
        [10 + 1.25 * k for k in range(1, 24)] + [math.inf]
    )
    assert {b - a for (a, _), (b, _) in itertools.pairwise(changes)} == {16}


async def test_a_burst_of_429s_counts_as_one_decrease() -> None:
    """Sixteen limited answers in a row (``memory // 2``) halve the rate once, not per 429."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    for _ in range(16):
        budget.answered(limited=True)
    assert budget.stats.current_rate == 5.0
    assert budget.stats.throttles == 16
    for _ in range(100):
        budget.answered(limited=False)
    assert budget.stats.lowest_rate == 5.0


async def test_a_decrease_halves_what_the_client_really_sent() -> None:
    """A client sending 2/s under a cap of 10/s backs off to 1/s, not to 5/s."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    await paced(budget, clock, 32, every=0.5)
    await paced(budget, clock, 9, every=0.5, limited=True)
    assert budget.stats.current_rate == pytest.approx(1.0)


async def test_a_rate_is_never_halved_below_min_rate() -> None:
    """Endless 429s stop halving at ``min_rate``."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock, min_rate=0.5)
    for _ in range(1000):
        budget.answered(limited=True)
    assert budget.stats.current_rate == 0.5
    assert budget.stats.lowest_rate == 0.5


async def test_polls_keep_half_of_the_rate_while_many_submits_wait() -> None:
    """At a cap of 10/s, eight greedy submitters leave a greedy poller its 5/s, and a poll
    that comes along now and then waits at most one poll-lane token."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    counts: dict[RequestKind, int] = {"poll": 0, "submit": 0}
    poll_waits: list[float] = []
    end = clock.now + 60.0

    async def greedy(kind: RequestKind) -> None:
        while clock.now < end:
            await budget.acquire(kind)
            counts[kind] += clock.now <= end

    async def now_and_then() -> None:
        while clock.now < end:
            await clock.sleep(1.3)
            asked = clock.now
            await budget.acquire("poll")
            poll_waits.append(clock.now - asked)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(greedy, "submit")
        tg.start_soon(now_and_then)
    assert max(poll_waits) <= 0.2 + 1e-9  # one token of a 5/s lane

    counts = {"poll": 0, "submit": 0}
    end = clock.now + 60.0
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(greedy, "submit")
        tg.start_soon(greedy, "poll")
    assert counts["poll"] >= 0.45 * 10 * 60
    assert counts["poll"] + counts["submit"] <= 10 * 60 + 10


async def test_submits_use_the_whole_rate_when_no_poll_waits() -> None:
    """With no poll waiting, submitters spend the poll lane too: its half of the burst at once,
    then 10/s under a cap of 10/s."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    granted: list[float] = []
    end = clock.now + 60.0

    async def greedy() -> None:
        while clock.now < end:
            await budget.acquire("submit")
            granted.append(clock.now)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(greedy)
    assert granted[9] == 1000.0
    assert sum(at <= end for at in granted) >= 10 + 10 * 60 - 1  # the last may round past end


async def test_a_submit_behind_a_poll_borrows_once_the_poll_is_served() -> None:
    """A submit that must wait for its own slow lane while a poll waits takes the next token
    of either lane as soon as that poll has gone."""
    clock = ManualClock()
    # Submits fill at 1/s, polls at 9/s; the burst goes first, so both lanes start empty.
    budget = RateBudget(cap=10.0, clock=clock, poll_share=0.9)
    await paced(budget, clock, 10, every=0.0)
    served: dict[RequestKind, float] = {}

    async def ask(kind: RequestKind) -> None:
        await budget.acquire(kind)
        served[kind] = clock.now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "submit")
        tg.start_soon(ask, "poll")
    assert served["poll"] == pytest.approx(1000.0 + 1 / 9)
    assert served["submit"] == pytest.approx(1000.0 + 2 / 10)


async def test_a_full_lanes_refill_spills_into_the_other() -> None:
    """Half a second after five polls emptied their lane, it is full again: the full submit
    lane's refill spilled into it, so ten polls (five borrowed) go at once."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    for _ in range(5):
        await budget.acquire("poll")  # from the poll lane only: the submit lane stays full
    clock.now += 0.5
    now = clock.now
    for _ in range(10):
        await budget.acquire("poll")
    assert clock.now == now


async def test_each_kind_is_served_in_arrival_order() -> None:
    """Two polls waiting behind a submit are served first come, first served, once the submit
    has gone and they may borrow its lane."""
    clock = ManualClock()
    # Polls fill at 1/s, submits at 9/s; the burst goes first, so both lanes start empty.
    budget = RateBudget(cap=10.0, clock=clock, poll_share=0.1)
    await paced(budget, clock, 10, every=0.0)
    served: list[tuple[str, float]] = []

    async def ask(kind: RequestKind, name: str) -> None:
        await budget.acquire(kind)
        served.append((name, clock.now - 1000.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "submit", "submit")
        for _ in range(SETTLE):
            await anyio.lowlevel.checkpoint()
        tg.start_soon(ask, "poll", "first poll")
        tg.start_soon(ask, "poll", "second poll")
    assert [name for name, _ in served] == ["submit", "first poll", "second poll"]
    assert [at for _, at in served] == pytest.approx([1 / 9, 2 / 10, 3 / 10])


async def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    """A poll whose wait is cancelled stops counting as waiting: submits borrow its lane again."""
    clock = ManualClock()
    budget = RateBudget(cap=10.0, clock=clock)
    await paced(budget, clock, 10, every=0.0)  # the burst: both lanes empty
    async with anyio.create_task_group() as tg:
        tg.start_soon(budget.acquire, "poll")
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert clock.now == 1000.0
    await budget.acquire("submit")
    assert clock.now == pytest.approx(1000.0 + 1 / 10)


async def test_stats_report_grants_throttles_rates_and_share() -> None:
    """Stats count grants and limited answers, and show the rate in force, the lowest, the share."""
    clock = ManualClock()
    budget = RateBudget(cap=None, clock=clock)
    fresh = budget.stats
    assert (fresh.granted, fresh.throttles, fresh.limited_share) == (0, 0, 0.0)
    assert fresh.current_rate == fresh.lowest_rate == math.inf
    await paced(budget, clock, 32, every=0.1)
    await paced(budget, clock, 9, every=0.1, limited=True)
    stats = budget.stats
    assert stats.granted == 41
    assert stats.throttles == 9
    assert stats.current_rate == stats.lowest_rate == pytest.approx(5.0)
    assert stats.limited_share == pytest.approx(1 - (31 / 32) ** 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cap": 0}, "cap must be a positive"),
        ({"cap": -1.0}, "cap must be a positive"),
        ({"cap": math.inf}, "cap must be a positive"),
        ({"cap": True}, "cap must be a positive"),
        ({"poll_share": 0.0}, "poll_share must be a number strictly between 0 and 1"),
        ({"poll_share": 1.0}, "poll_share must be a number strictly between 0 and 1"),
        ({"tolerance": 0.0}, "tolerance must be a number strictly between 0 and 1"),
        ({"tolerance": 1.5}, "tolerance must be a number strictly between 0 and 1"),
        ({"memory": 1}, "memory must be a whole number of answers, at least 2"),
        ({"memory": 32.0}, "memory must be a whole number of answers, at least 2"),
        ({"min_rate": 0.0}, "min_rate must be a positive"),
        ({"min_rate": math.nan}, "min_rate must be a positive"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, object], message: str) -> None:
    """Each argument out of its range is refused with a message naming it."""
    options: dict[str, object] = {"cap": None, "clock": ManualClock(), **kwargs}
    with pytest.raises(ValueError, match=message):
        RateBudget(**options)  # type: ignore[arg-type]


async def test_acquire_refuses_an_unknown_kind() -> None:
    """A request is a poll or a submit; anything else is refused."""
    budget = RateBudget(cap=None, clock=ManualClock())
    with pytest.raises(ValueError, match="kind must be 'poll' or 'submit'"):
        await budget.acquire("download")  # type: ignore[arg-type]


# -- one budget for a fleet ----------------------------------------------------------------


class FleetRateStore:
    """The fleet's rate as the task store keeps it (one change per cooldown), for the budgets
    of one test; each budget's :class:`Member` proposes to it."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.rate: float | None = None
        self.at = -math.inf
        self.members: list[Member] = []

    def propose(
        self, proposer: Member, rate: float | None, *, decrease: bool, cooldown: float
    ) -> None:
        current = math.inf if self.rate is None else self.rate
        wanted = math.inf if rate is None else rate
        moves = wanted < current if decrease else wanted != current
        if moves and self.clock.now - self.at >= cooldown:
            self.rate, self.at = rate, self.clock.now
            for member in self.members:
                if member is not proposer:
                    member.budget.adopt(self.rate)
        proposer.budget.adopt(self.rate, peer=False)


class Member:
    """One client's FleetRate (the rule under test is the rate: no token is taken here)."""

    shared = True

    def __init__(self, store: FleetRateStore, budget: RateBudget) -> None:
        self.store, self.budget = store, budget
        store.members.append(self)
        budget.fleet = self

    def portion(self) -> float:
        return 1 / len(self.store.members)

    async def take(self, kind: RequestKind, rate: float, poll_share: float) -> float:
        raise AssertionError("unlimited: no token is taken")

    def propose(self, rate: float | None, *, decrease: bool, cooldown: float) -> None:
        self.store.propose(self, rate, decrease=decrease, cooldown=cooldown)


async def test_a_burst_every_client_sees_halves_the_fleets_pace_once() -> None:
    """Three clients each sending 5 requests a second (the fleet 15) all see one burst of
    429s: the fleet's rate is halved once, from the fleet's pace (7.5), not once per client
    and not from one client's own pace (2.5, then lower)."""
    clock = ManualClock()
    store = FleetRateStore(clock)
    budgets = [RateBudget(cap=None, clock=clock) for _ in range(3)]
    for budget in budgets:
        Member(store, budget)
    for _ in range(50):  # 10 s at 5 requests a second each
        for budget in budgets:
            await budget.acquire()
        clock.now += 0.2
    for _ in range(40):  # the burst: every client sees mostly 429s, at the same moment
        for budget in budgets:
            budget.answered(limited=True)
    assert store.rate == pytest.approx(7.5)
    assert [b.stats.current_rate for b in budgets] == [pytest.approx(7.5)] * 3
    assert min(b.stats.lowest_rate for b in budgets) == pytest.approx(7.5)


class Flaky:
    """A FleetRate whose store answers until told it is gone; a quarter of the rate alone."""

    def __init__(self) -> None:
        self.shared = True

    def portion(self) -> float:
        return 0.25

    async def take(self, kind: RequestKind, rate: float, poll_share: float) -> float:
        return 0.0

    def propose(self, rate: float | None, *, decrease: bool, cooldown: float) -> None:
        raise AssertionError("the cap never moves")


async def test_a_client_that_loses_its_store_starts_alone_with_empty_lanes() -> None:
    """Capped at 20 with the fleet's bucket, then the store goes: alone, the client runs at
    its quarter (5 a second) from empty lanes. It kept the tokens it held from before the
    fleet (a burst of 5 at once, above the fleet's rate), seen on benchmarks/fleet.py."""
    clock = ManualClock()
    budget = RateBudget(cap=20.0, clock=clock)
    fleet = Flaky()
    budget.fleet = fleet
    for _ in range(10):
        await budget.acquire()  # from the fleet's bucket: at once
    assert clock.now == 1000.0
    fleet.shared = False
    start = clock.now
    for _ in range(5):
        await budget.acquire()
    assert clock.now - start >= 4 / 5 - 1e-9  # five requests at 5 a second, none at once
