"""The supervisor's state machine (``graceserve.process.machine``) without processes.

Fake workers and a fake clock (``testsupport.machine_world``): first the findings of issue 20 as
exact scenarios, then a model-based walk (hypothesis, derandomized: the same
sequences every run) over every event a supervisor meets, checking after each step
and once everything has settled:

- the worker count matches the target (never more; exactly, once at rest);
- no phase is stuck past its deadline (a reload's, the stop's kill margin, the lame duck);
- every ``ctl graceful`` got an answer, and it tells the truth (ok: only code at least
  as new as its call accepts; failed or stopping: so it is);
- exactly one generation accepts whenever no reload is open.
"""

from __future__ import annotations

import itertools
import os
import signal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from graceserve.process.machine import Exit, Phase, Step
from graceserve.process.machineparts import HAND_OVER_TIMEOUT, KILL_MARGIN
from testsupport.machine_world import INPROCESS, World

HUP, TTIN, TTOU, TERM = signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTERM


def started(world: World) -> World:
    """The first workers ready: the world serves."""
    for worker in list(world.workers.values()):
        if not worker.ready:
            world.ready(worker)
    assert world.phase is Phase.SERVING
    return world


def new_workers(world: World, generation: int) -> list:  # type: ignore[type-arg]
    return [w for w in world.workers.values() if w.generation == generation and not w.stop]


# -- the findings, as scenarios ------------------------------------------------------------


def test_ttin_during_a_reload_grows_the_new_generation_and_the_reload_ends() -> None:
    world = started(World(target=2))
    ctl = world.graceful()
    world.signal(TTIN)
    assert len(new_workers(world, 2)) == 3  # the reload waits only for what it started
    for worker in new_workers(world, 2):
        world.ready(worker)
    world.settle()
    assert ctl.answer == "ok"
    assert sorted(w.generation for w in world.accepting()) == [2, 2, 2]


def test_ttou_during_a_reload_leaves_exactly_the_target() -> None:
    world = started(World(target=2))
    world.graceful()
    world.signal(TTOU)
    assert len(new_workers(world, 2)) == 1
    assert len(new_workers(world, 1)) == 1  # the old generation shrinks too
    world.settle()
    assert [w.generation for w in world.accepting()] == [2]
    assert world.status.snapshot()["workers"] == 1


def test_a_new_worker_that_dies_after_ready_while_a_sibling_imports_is_replaced() -> None:
    world = started(World(target=2))
    ctl = world.graceful()
    first, second = new_workers(world, 2)
    world.ready(first)
    world.exit(first, -9, reported=False)  # the out-of-memory killer
    assert len(new_workers(world, 2)) == 2  # the sibling and a replacement
    world.ready(second)
    world.settle()
    assert ctl.answer == "ok"
    assert sorted(w.generation for w in world.accepting()) == [2, 2]


@pytest.mark.parametrize("inprocess", [False, True], ids=["workers", "one-process"])
def test_an_import_that_never_ends_fails_the_reload_at_the_deadline(inprocess: bool) -> None:
    world = World(target=1 if inprocess else 2, inprocess=inprocess, start_timeout=3.0)
    started(world)
    ctl = world.graceful()
    world.tick(2.9)
    assert world.machine.reload is not None
    world.tick(0.2)
    assert world.machine.reload is None
    assert ctl.answer == "failed"
    assert {w.generation for w in world.accepting()} == {1}
    last = world.status.snapshot()["last_reload"]
    assert "generation 2 was not ready after 3s (0 of" in last["reason"], last
    later = world.graceful()  # the next reload works
    world.settle()
    assert later.answer == "ok"
    assert world.status.snapshot()["generation"] == 2


@pytest.mark.parametrize("inprocess", [False, True], ids=["workers", "one-process"])
def test_a_hup_during_a_reload_starts_the_next_one_with_the_code_of_its_time(
    inprocess: bool,
) -> None:
    world = started(World(target=1 if inprocess else 2, inprocess=inprocess))
    first = world.graceful()  # v2
    second = world.graceful()  # v3, while v2 imports
    assert world.machine.pending
    for worker in new_workers(world, 2):
        world.ready(worker)
    for worker in [w for w in world.workers.values() if w.stop and not w.closed]:
        world.close(worker)
    world.answer()
    assert (first.answer, first.generation) == ("ok", 2)
    assert second.answer == ""  # v3 starts only now
    assert world.machine.reload is not None
    assert world.machine.reload.generation == 3
    world.settle()
    assert (second.answer, second.generation, second.serving_codes) == ("ok", 3, {3})


def test_one_process_ignores_ttin_during_its_first_reload() -> None:
    world = started(World(target=1, inprocess=True))
    ctl = world.graceful()
    world.signal(TTIN)
    world.signal(TTOU)
    assert len(new_workers(world, 2)) == 1
    world.settle()
    assert ctl.answer == "ok"
    assert [w.generation for w in world.accepting()] == [2]


def test_a_hup_storm_during_a_first_reload_is_one_more_reload() -> None:
    world = started(World(target=1, inprocess=True))
    world.graceful()
    for _ in range(15):
        world.signal(HUP)
    world.settle()
    status = world.status.snapshot()
    assert (status["reloads"], status["generation"]) == (2, 3)
    assert all(entry["ok"] for entry in status["recent_reloads"])


def test_a_stop_during_a_reload_abandons_it_unreported() -> None:
    world = started(World(target=2))
    ctl = world.graceful()
    ready, importing = new_workers(world, 2)
    world.ready(ready)
    world.signal(TERM)
    assert importing.key not in world.workers  # killed: it never served
    assert ready.stop  # it served: it drains with the others
    assert not any(fields[0] == "READY=1" for fields in world.notified[-2:])
    world.answer()
    assert ctl.answer == "stopping"
    world.settle()
    assert world.phase is Phase.STOPPED
    assert world.status.snapshot()["reloads"] == 0


def test_one_process_stops_alone_unless_a_worker_serves() -> None:
    world = started(World(target=1, inprocess=True))
    world.graceful()  # its worker never gets ready
    world.signal(TERM)
    assert world.alone_stops == [TERM]
    assert world.phase is Phase.STOPPED


def test_after_a_reload_the_stop_counts_what_this_process_cut() -> None:
    world = started(World(target=1, inprocess=True))
    world.graceful()
    world.settle(rounds=1)  # the worker is ready; this process was told to stop accepting
    server = world.workers[INPROCESS]
    assert server.stop == "shared"
    world.close(server)  # its drain goes on (a request in flight)
    world.signal(TERM)
    assert world.alone_stops == []
    for worker in [w for w in world.workers.values() if w.key != INPROCESS]:
        world.close(worker)
        world.exit(worker, 0, reported=True)
    assert world.machine.exit_code is None  # this process's drain has not ended
    del world.workers[INPROCESS]
    world.machine.exited(INPROCESS, Exit(4, "exit code 4", reported=True, forced=1), world.now)
    assert world.machine.finished
    assert world.machine.exit_code == 4


def test_max_requests_replaces_this_process_then_recycles_workers() -> None:
    world = started(World(target=1, inprocess=True))
    world.machine.recycle(INPROCESS, 100, world.now)
    replacement = new_workers(world, 1)[-1]
    assert replacement.key != INPROCESS
    assert world.workers[INPROCESS].stop == ""
    world.ready(replacement)
    assert world.workers[INPROCESS].stop == "shared"  # only once its replacement is ready
    world.settle()
    assert world.status.snapshot()["generation"] == 1  # a recycling is not a reload


def test_generations_have_one_numbering() -> None:
    world = started(World(target=1, inprocess=True))
    world.graceful()
    world.settle()
    assert world.status.snapshot()["generation"] == 2
    assert ("READY=1", "STATUS=generation 2 serving") in world.notified
    assert {w.generation for w in world.accepting()} == {2}


# -- the model-based walk ----------------------------------------------------------------


class Supervision(RuleBasedStateMachine):
    """Any sequence of events, with the invariants of the module docstring."""

    target = 2
    inprocess = False
    serving = True  # begin with the first workers ready (else: while they start)
    spares = 0  # --max-requests keeps one

    def __init__(self) -> None:
        super().__init__()
        self.world = World(
            target=self.target, inprocess=self.inprocess, start_timeout=30.0,
            worker_timeout=10.0, spares=self.spares,
        )  # fmt: skip
        if self.serving:
            started(self.world)

    # events
    @rule(signum=st.sampled_from([HUP, TTIN, TTOU, signal.SIGUSR1]))
    def a_signal(self, signum: int) -> None:
        self.world.signal(signum)

    @rule(signum=st.sampled_from([TERM, signal.SIGINT, signal.SIGQUIT]))
    def a_stop(self, signum: int) -> None:
        self.world.signal(signum)

    @rule()
    def ctl_graceful(self) -> None:
        self.world.graceful()

    @rule(index=st.integers(0, 5))
    def a_worker_gets_ready(self, index: int) -> None:
        self._act(index, lambda w: not w.ready and not w.stop, self.world.ready)

    @rule()
    def every_starting_worker_gets_ready(self) -> None:
        for worker in list(self.world.workers.values()):
            if worker.key in self.world.workers and not (
                worker.ready or worker.stop or worker.killed
            ):
                self.world.ready(worker)
        self.world.answer()

    @rule(index=st.integers(0, 5))
    def a_worker_stops_accepting(self, index: int) -> None:
        self._act(index, lambda w: bool(w.stop) and not w.closed, self.world.close)

    @rule(index=st.integers(0, 5))
    def a_worker_ends_its_drain(self, index: int) -> None:
        self._act(index, lambda w: w.closed, lambda w: self.world.exit(w, 0, reported=True))

    @rule(index=st.integers(0, 5))
    def a_worker_crashes(self, index: int) -> None:
        self._act(
            index, lambda w: not w.inprocess, lambda w: self.world.exit(w, -9, reported=False)
        )

    @rule(index=st.integers(0, 5))
    def a_worker_cannot_import(self, index: int) -> None:
        self._act(index, lambda w: not w.ready, lambda w: self.world.exit(w, 3, reported=False))

    @rule(index=st.integers(0, 5))
    def a_worker_reaches_max_requests(self, index: int) -> None:
        self._act(
            index,
            lambda w: w.ready,
            lambda w: self.world.machine.recycle(w.key, 100, self.world.now),
        )

    @rule(index=st.integers(0, 5))
    def a_worker_reports_progress(self, index: int) -> None:
        self._act(
            index,
            lambda w: w.ready,
            lambda w: self.world.machine.progress(w.key, self.world.now, 0),
        )

    @rule(seconds=st.sampled_from([0.1, 1.0, 3.0, 11.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        self.world.tick(seconds)

    @rule()
    def killed_workers_die(self) -> None:
        self.world.deliver_deaths()

    def _act(self, index: int, which: object, action: object) -> None:
        candidates = [w for w in self.world.workers.values() if not w.killed and which(w)]  # type: ignore[operator]
        if candidates:
            action(candidates[index % len(candidates)])  # type: ignore[operator]
        self.world.answer()

    # invariants, after every step
    @invariant()
    def members_are_the_live_workers(self) -> None:
        machine, world = self.world.machine, self.world
        if machine.phase is not Phase.STOPPED:
            assert set(machine.members) == set(world.workers)

    @invariant()
    def never_more_than_the_target(self) -> None:
        machine = self.world.machine
        if machine.stopping or machine.finished:
            return
        for generation in {m.generation for m in machine.members.values()}:
            serving = [
                m for m in machine.members.values() if m.generation == generation and m.serving
            ]
            assert len(serving) <= machine.target, (generation, machine.members)

    @invariant()
    def nothing_is_stuck_past_its_deadline(self) -> None:
        machine, now = self.world.machine, self.world.now
        if machine.reload is not None:
            assert now < machine.reload.deadline, machine.reload
        stop = machine.stop
        if stop is not None and machine.phase is Phase.LAME_DUCK:
            assert now < stop.lame_duck_until
        if stop is not None and stop.deadline is not None and now > stop.deadline + KILL_MARGIN:
            assert all(w.killed or w.inprocess for w in self.world.workers.values())

    @invariant()
    def one_generation_accepts_outside_a_reload(self) -> None:
        machine = self.world.machine
        if machine.phase is Phase.SERVING:
            # A worker killed for not stopping in time accepts nothing any more.
            generations = {w.generation for w in self.world.accepting()}
            assert generations <= {machine.generation}, (generations, machine.generation)

    @invariant()
    def every_answer_tells_the_truth(self) -> None:
        world = self.world
        for ctl in world.ctls:
            if ctl.answer == "ok":
                assert min(ctl.serving_codes, default=ctl.code) >= ctl.code, ctl
                assert ctl.generation >= 2
            elif ctl.answer == "stopping":
                assert world.machine.stopping or world.machine.finished

    @invariant()
    def a_reload_fails_at_its_deadline_only_for_a_worker_that_was_late(self) -> None:
        # Not for one it never started: a worker still importing was killed just then.
        outcomes = [
            (entry["ok"], entry["reason"], entry["generation"])
            for entry in self.world.status.snapshot()["recent_reloads"]
        ]
        reload = self.world.machine.reload
        if reload is not None and reload.step is Step.FAILING:  # decided, not yet reported
            outcomes.append((*reload.outcome, reload.generation))
        for ok, reason, generation in outcomes:
            if not ok and "was not ready after" in reason:
                late = [when for when, g in self.world.abandoned if g == generation]
                assert late, (reason, self.world.abandoned)

    @invariant()
    def status_says_what_the_machine_is(self) -> None:
        machine, status = self.world.machine, self.world.status.snapshot()
        if machine.phase in (Phase.SERVING, Phase.RELOADING, Phase.STARTING):
            assert status["state"] == machine.phase.state
        if machine.phase is Phase.SERVING:
            assert status["generation"] == machine.generation
        if machine.reload is not None and machine.reload.step is not Step.STARTING:
            assert machine.reload.deadline - self.world.now <= HAND_OVER_TIMEOUT + 1e-6

    def teardown(self) -> None:
        """Everything cooperates from now on: the machine must come to rest with the
        target serving, every ctl answered."""
        world = self.world
        world.settle()
        self.a_reload_fails_at_its_deadline_only_for_a_worker_that_was_late()
        machine = world.machine
        if machine.phase is not Phase.STOPPED:
            assert machine.reload is None, machine.reload
            assert not machine.pending
        if machine.phase is Phase.SERVING:
            accepting = world.accepting()
            assert len(accepting) == machine.target, (accepting, machine.target)
            assert {w.generation for w in accepting} == {machine.generation}
            assert world.status.snapshot()["workers"] in (machine.target, None)
        else:
            assert machine.phase is Phase.STOPPED, machine.phase
            assert machine.exit_code is not None
        assert all(ctl.answer for ctl in world.ctls), world.ctls


class OneProcessSupervision(Supervision):
    target = 1
    inprocess = True
    spares = 1  # --max-requests: a worker process stands by to take over


class RecyclingSupervision(Supervision):
    spares = 1


class StartingSupervision(Supervision):
    serving = False


# CI: the same 150 walks of 25 steps every run.  To hunt: GS_RANDOM=1 GS_WALK=5000
# GS_STEPS=50 (and GS_LENGTH=4 for the exhaustive walk below, ~40 s).
WALK = settings(
    max_examples=int(os.environ.get("GS_WALK", "150")),
    stateful_step_count=int(os.environ.get("GS_STEPS", "25")),
    derandomize=not os.environ.get("GS_RANDOM"),
    deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
)  # fmt: skip

TestWorkersWalk = pytest.mark.slow(Supervision.TestCase)
TestWorkersWalk.settings = WALK
TestOneProcessWalk = pytest.mark.slow(OneProcessSupervision.TestCase)
TestOneProcessWalk.settings = WALK
TestStartingWalk = pytest.mark.slow(StartingSupervision.TestCase)
TestStartingWalk.settings = WALK
TestRecyclingWalk = pytest.mark.slow(RecyclingSupervision.TestCase)
TestRecyclingWalk.settings = WALK


# -- every short sequence, exhaustively ----------------------------------------------------

EVENTS: dict[str, object] = {
    "HUP": lambda m: m.a_signal(HUP),
    "TTIN": lambda m: m.a_signal(TTIN),
    "TTOU": lambda m: m.a_signal(TTOU),
    "TERM": lambda m: m.a_stop(TERM),
    "ctl graceful": lambda m: m.ctl_graceful(),
    "one ready": lambda m: m.a_worker_gets_ready(0),
    "all ready": lambda m: m.every_starting_worker_gets_ready(),
    "one stops accepting": lambda m: m.a_worker_stops_accepting(0),
    "one crashes": lambda m: m.a_worker_crashes(0),
    "one cannot import": lambda m: m.a_worker_cannot_import(0),
    "max requests": lambda m: m.a_worker_reaches_max_requests(0),
    "31 s pass": lambda m: m.time_passes(31.0),
}
INVARIANTS = [
    name for name in dir(Supervision)
    if getattr(getattr(Supervision, name), "hypothesis_stateful_invariant", None) is not None
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", [Supervision, OneProcessSupervision, StartingSupervision, RecyclingSupervision],
    ids=["workers", "one-process", "starting", "recycling"],
)  # fmt: skip
def test_every_sequence_of_three_events(variant: type[Supervision]) -> None:
    assert len(INVARIANTS) >= 6, INVARIANTS
    for sequence in itertools.product(EVENTS, repeat=int(os.environ.get("GS_LENGTH", "3"))):
        walk = variant()
        try:
            for event in sequence:
                EVENTS[event](walk)  # type: ignore[operator]
                for name in INVARIANTS:
                    getattr(walk, name)()
            walk.teardown()
        except AssertionError as exc:
            raise AssertionError(f"after {' -> '.join(sequence)}: {exc}") from exc
