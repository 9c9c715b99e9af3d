"""The one memory budget: windows granted whole and in turn, no deadlock, no starvation."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_stow.core.budget import MemoryBudget, Share


def test_a_window_larger_than_the_budget_is_clamped_and_granted_at_once() -> None:
    """Asking for more than the whole budget never waits: the window is the whole budget."""
    budget = MemoryBudget(100, 1000)
    assert budget.window_bytes == 100
    share = budget.share(lambda: None)
    share.hold(10)
    assert share.leased and not share.paused


def test_windows_are_granted_first_come_first_served() -> None:
    """With room for two windows, the third and fourth wait and are granted in arrival order."""
    budget = MemoryBudget(200, 100)
    shares = [budget.share(lambda: None) for _ in range(4)]
    for share in shares:
        share.hold(1)
    assert [s.leased for s in shares] == [True, True, False, False]
    assert shares[2].paused and shares[3].paused
    shares[1].close()
    shares[1].free(1)  # the second is done: its window goes to the oldest waiter
    assert shares[2].leased and not shares[3].leased
    shares[0].free(1)  # idle while another waits: gives its window back
    assert shares[3].leased and not shares[0].leased
    assert budget.leased_bytes <= budget.total_bytes


def test_a_holder_yields_after_a_window_read_while_another_waits() -> None:
    """Round robin: past a window read since its grant, at a drainable read, a holder yields,
    gives its window back once it holds nothing, and queues behind the waiter."""
    budget = MemoryBudget(100, 100)
    first = budget.share(lambda: None)
    second = budget.share(lambda: None)
    first.hold(40)
    second.hold(1)
    assert second.paused
    first.read_ended(drainable=True)
    assert not first.yielding  # 40 read since its grant: not its turn to yield yet
    first.hold(70)
    first.read_ended(drainable=False)  # a part its storage cannot send yet: no yield
    assert not first.yielding
    first.read_ended(drainable=True)
    assert first.yielding and first.paused
    first.free(110)
    assert second.leased and not second.paused
    assert first.queued and first.paused


def test_bytes_after_the_yield_make_it_decide_again() -> None:
    """A socket read's later HTTP chunks arrive after the yield: if they leave bytes its
    storage cannot drain unaided, the upload reads on instead of holding them for good."""
    budget = MemoryBudget(100, 100)
    first = budget.share(lambda: None)
    second = budget.share(lambda: None)
    first.hold(60)
    first.free(50)  # written; nobody waits yet, so it keeps its window
    second.hold(1)
    first.hold(45)  # 105 read since its grant, 55 held
    first.read_ended(drainable=True)  # its batch just went to storage
    assert first.yielding
    first.hold(5)  # the same socket read's next chunk: a new partial batch
    first.read_ended(drainable=False)
    assert not first.yielding and not first.paused and first.leased
    first.read_ended(drainable=True)
    assert first.yielding


def test_a_share_above_its_window_pauses_until_under_half() -> None:
    """High water at the window, low water at half of it."""
    budget = MemoryBudget(1000, 100)
    share = budget.share(lambda: None)
    share.hold(100)
    assert share.paused
    share.free(50)
    assert share.paused
    share.free(1)
    assert not share.paused


@dataclass
class _Upload:
    """One upload in the simulation: a client with ``body`` bytes and a store that
    sends only whole parts of at least ``cut`` bytes (S3's rule), or the last one."""

    share: Share
    body: int
    cut: int
    read: int = 0
    filled: int = 0
    sending: int = 0
    finished: bool = False
    reads_while_paused: list[int] = field(default_factory=list)

    @property
    def finishing(self) -> bool:
        return self.read >= self.body

    def drainable(self) -> bool:
        return self.filled == 0 or self.filled >= self.cut or self.finishing

    def start_send(self) -> None:
        if self.sending == 0 and (self.filled >= self.cut or (self.finishing and self.filled)):
            self.sending, self.filled = self.filled, 0

    @property
    def done(self) -> bool:
        return self.finishing and self.filled == 0 and self.sending == 0


@settings(max_examples=150, deadline=None)
@given(
    uploads=st.lists(st.integers(1, 400), min_size=1, max_size=12),
    window=st.integers(20, 120),
    total_windows=st.integers(1, 4),
    read_size=st.integers(1, 15),
    cut_share=st.sampled_from([1.0, 0.5, 0.1, 0.0]),
    choices=st.lists(st.integers(0, 10_000), max_size=3000),
)
def test_uploads_needing_a_minimum_to_progress_all_finish(
    uploads: list[int],
    window: int,
    total_windows: int,
    read_size: int,
    cut_share: float,
    choices: list[int],
) -> None:
    """Many uploads whose store writes only once it has gathered up to half a window share a
    budget of a few windows; whatever order the clients and the store act in, some action
    is always possible (no deadlock), every upload finishes (no starvation), and the windows
    granted never exceed the budget."""
    budget = MemoryBudget(window * total_windows, window)
    # S3Storage sends a part at half a window; the filesystem writes 1 MiB batches (an
    # eighth of its window); memory writes everything at once.
    cut = max(1, int(budget.window_bytes // 2 * cut_share))
    sims = [_Upload(budget.share(lambda: None), body, cut) for body in uploads]
    picks = iter(choices)
    for _ in range(100_000):
        for sim in sims:
            sim.start_send()
        # What may happen now: a client's read (while not paused), a store's send completing.
        actions: list[tuple[str, _Upload]] = []
        for sim in sims:
            if not sim.finishing and not sim.share.paused:
                actions.append(("read", sim))
            if sim.sending:
                actions.append(("sent", sim))
        if not actions:
            break
        kind, sim = actions[next(picks, 0) % len(actions)]
        if kind == "read":
            # One socket read may hold several HTTP chunks, each handled on its own: a pause
            # takes effect only after the last of them (Twisted's HTTPChannel).
            for _ in range(1 + next(picks, 0) % 3):
                n = min(read_size, sim.body - sim.read)
                if n == 0:
                    break
                sim.read += n
                sim.filled += n
                sim.share.hold(n)
                sim.start_send()  # a writer hands on a full batch within write()
                if sim.finishing:
                    sim.share.close()
                sim.share.read_ended(drainable=sim.drainable())
        else:
            sent, sim.sending = sim.sending, 0
            sim.share.free(sent)
        assert budget.leased_bytes <= budget.total_bytes
        # Outside windows: at most one read per upload.
        assert budget.held_bytes <= budget.leased_bytes + len(sims) * 3 * read_size
    assert all(sim.done for sim in sims), [(s.read, s.body, s.filled, s.sending) for s in sims]
    assert budget.held_bytes == 0 and budget.leased_bytes == 0 and budget.waiting == 0
