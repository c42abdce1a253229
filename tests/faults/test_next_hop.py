"""The next hop fails under the proxy: goes down and comes back, drops the connection in the
middle of DATA, is slow within its timeout and slower than it. Real sockets on every side
(sending clients, the proxy with its worker pool, a next hop that keeps what it accepts);
each test ends with the accounting: every message delivered, quarantined or refused with a
reply its sender saw, exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from proxy.proxy_harness import RunningProxy

from faults.client import deliver, make_message, run_all
from faults.ledger import Ledger, account, read_quarantine
from faults.nexthop import NextHop

Factory = Callable[..., RunningProxy]


def _traffic(p: RunningProxy, ledger: Ledger, count: int, *, concurrency: int,
             retries: int, retry_delay: float = 0.3,
             kinds: tuple[str, ...] = ("text", "photo", "known", "text")) -> None:
    def job(i: int) -> Callable[[], object]:
        seq = ledger.new_seq()
        raw = make_message(seq, kinds[i % len(kinds)], seed=i)
        return lambda: deliver(ledger, seq, raw, p.host, p.port, retries=retries,
                               retry_delay=retry_delay, timeout=60)

    run_all([job(i) for i in range(count)], concurrency)


def _check(ledger: Ledger, hop: NextHop, quarantine: Path) -> dict[int | None, int]:
    """The accounting; the final reply codes."""
    result = account(ledger, hop.kept(), read_quarantine(quarantine))
    result.assert_exact()
    return result.codes


def _seen(ledger: Ledger, prefix: str) -> list[str]:
    return [a.reply for a in ledger.replies() if a.reply.startswith(prefix)]


def test_next_hop_goes_down_and_comes_back(proxy_factory: Factory, faulty_hop: NextHop) -> None:
    """Down for a while in the middle of traffic (connections cut, new ones refused): what
    was in flight is refused 451, senders retry, and once it is back every message is
    delivered or quarantined exactly once."""
    faulty_hop.faults.data_command_delay = 0.1  # so that the outage lands mid-traffic
    p = proxy_factory(faulty_hop.address, smtp={"next_hop_timeout": 5.0})
    ledger = Ledger()

    def outage() -> None:
        deadline = time.monotonic() + 30
        while len(faulty_hop.messages) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        faulty_hop.stop()
        time.sleep(1.5)
        faulty_hop.start()

    chaos = threading.Thread(target=outage)
    chaos.start()
    started = time.monotonic()
    _traffic(p, ledger, 64, concurrency=8, retries=40)
    chaos.join(30)
    codes = _check(ledger, faulty_hop, p.quarantine_dir)
    assert codes == {250: 64}
    assert _seen(ledger, "451 4.4."), "the outage was never seen: the test tested nothing"
    assert not _seen(ledger, "5"), "a temporary fault must never be a permanent refusal"
    assert time.monotonic() - started < 90


def test_next_hop_drops_the_connection_mid_data(proxy_factory: Factory,
                                                faulty_hop: NextHop) -> None:
    """The next hop hangs up after part of the message: the message is not acknowledged
    (451 4.4.2, it was not kept there), the sender's retry delivers it once."""
    faulty_hop.faults.drop_after = 100  # (every test message is longer)
    faulty_hop.faults.drops_left = 6
    p = proxy_factory(faulty_hop.address, smtp={"next_hop_timeout": 5.0})
    ledger = Ledger()
    _traffic(p, ledger, 12, concurrency=3, retries=5, kinds=("photo", "text"))
    assert faulty_hop.dropped == 6
    codes = _check(ledger, faulty_hop, p.quarantine_dir)
    assert codes == {250: 12}
    refusals = [a.reply for a in ledger.replies() if not a.accepted]
    assert refusals and all(r.startswith("451 4.4.") for r in refusals), refusals


def test_slow_next_hop_within_its_timeout(proxy_factory: Factory, faulty_hop: NextHop) -> None:
    """Slow to greet and slow to answer each message, but within next_hop_timeout: every
    message is delivered, none refused, and slow answers do not serialise the others."""
    faulty_hop.faults.greeting_delay = 0.5
    faulty_hop.faults.end_of_data_delay = 1.0
    p = proxy_factory(faulty_hop.address, smtp={"next_hop_timeout": 5.0})
    ledger = Ledger()
    started = time.monotonic()
    _traffic(p, ledger, 16, concurrency=8, retries=0)
    elapsed = time.monotonic() - started
    codes = _check(ledger, faulty_hop, p.quarantine_dir)
    assert codes.get(250, 0) == 16
    # one at a time would take 16 x 1.5 s; eight at a time about 3 s (generous bound)
    assert elapsed < 16, elapsed


def test_next_hop_slower_than_its_timeout(proxy_factory: Factory, faulty_hop: NextHop) -> None:
    """Slower than next_hop_timeout to greet, then to answer DATA (before it has the
    message): 451 each time, nothing delivered; once it is quick again the retries are
    delivered once. (A next hop that keeps a message and answers after the timeout would
    get it twice when the sender retries: RFC 1047; next_hop_timeout must stay above the
    next hop's slowest answer.)"""
    faulty_hop.faults.greeting_delay = 2.5
    p = proxy_factory(faulty_hop.address, smtp={"next_hop_timeout": 1.0,
                                                "next_hop_pool_size": 0})
    ledger = Ledger()
    started = time.monotonic()
    _traffic(p, ledger, 4, concurrency=4, retries=0, kinds=("text",))
    assert {a.reply[:9] for a in ledger.replies()} == {"451 4.4.1"}
    assert time.monotonic() - started < 15  # each refused within its timeout, not later
    assert faulty_hop.kept() == []

    faulty_hop.faults.greeting_delay = 0.0
    faulty_hop.faults.data_command_delay = 2.5
    ledger_data = Ledger(prefix="d")
    _traffic(p, ledger_data, 4, concurrency=4, retries=0, kinds=("text",))
    assert all(a.code == 451 for a in ledger_data.replies()), ledger_data.replies()
    time.sleep(2.0)  # the next hop's late 354 finds the connection gone: nothing kept
    assert faulty_hop.kept() == []

    faulty_hop.faults.data_command_delay = 0.0
    for led in (ledger, ledger_data):
        for seq in list(led.attempts):
            deliver(led, seq, make_message(seq), p.host, p.port, retries=3)
    everything = Ledger()
    everything.attempts = {**ledger.snapshot(), **ledger_data.snapshot()}
    codes = _check(everything, faulty_hop, p.quarantine_dir)
    assert codes == {250: 8}
