"""The state machine's vocabulary: phases, members, exits, the reload record, effects.

Why this module exists: ``graceserve.process.machine`` (the decisions) and
``graceserve.process.machinestop`` and ``graceserve.process.machinereload`` (the stop's and the
reload's halves of them) share these types; they are plain data with no
behaviour beyond a name, and no I/O.  ``Core`` is the part of the machine
the two halves act on, so that they need not import the machine that owns them.
"""

from __future__ import annotations

import enum
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from graceserve.process.status import ServerStatus

__all__ = [
    "ABORT_GRACE",
    "FORCING",
    "HAND_OVER_TIMEOUT",
    "KILL_MARGIN",
    "MAX_START_FAILURES",
    "PROGRESS_INTERVAL",
    "Config",
    "Effects",
    "Exit",
    "Member",
    "Phase",
    "Step",
    "signal_name",
]

log = logging.getLogger("graceserve")

KILL_MARGIN = 1.0  # seconds past the stop's deadline before a worker still alive is killed
ABORT_GRACE = 2.0  # seconds between SIGABRT (stack dump) and SIGKILL for a stuck worker
MAX_START_FAILURES = 5  # in a row with none serving: exit 3; in one reload: it fails
HAND_OVER_TIMEOUT = 10.0  # seconds the losers of a reload get to stop accepting
PROGRESS_INTERVAL = 1.0  # seconds between the stop's progress lines
FORCING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class Phase(enum.Enum):
    """Where the supervisor's life is."""

    STARTING = "starting"
    SERVING = "serving"
    RELOADING = "reloading"
    LAME_DUCK = "lame duck"
    DRAINING = "draining"
    STOPPED = "stopped"

    @property
    def state(self) -> str:
        """The ``state`` ``ctl status`` shows."""
        return "draining" if self is Phase.LAME_DUCK else self.value


class Step(enum.Enum):
    """Where an open reload is."""

    STARTING = "starting"  # generation G+1 starts while G serves
    HANDING_OVER = "handing over"  # G+1 serves; G stops accepting, then it is reported
    FAILING = "failing"  # G keeps serving; G+1's ready workers stop accepting, then reported


@dataclass(frozen=True)
class Config:
    """What the machine needs of the settings."""

    target: int
    scalable: bool = True  # TTIN/TTOU change the target (not in one-process mode)
    start_timeout: float = 30.0
    grace: float = 8.0
    drain_delay: float = 0.0
    worker_timeout: float | None = None
    shared_listener: bool = False  # socket activation: systemd keeps the listener
    spares: int = 0  # --max-requests: workers kept imported and waiting, to replace at once


@dataclass
class Member:
    """The machine's view of one member: a worker process, or this process's server."""

    key: int
    generation: int
    started_at: float
    inprocess: bool = False
    ready: bool = False
    told: bool = False  # told to stop accepting (STOP sent)
    closed: bool = False  # said it stopped accepting
    recycling: bool = False  # served --max-requests: retired once a replacement is ready
    spare: bool = False  # started to stand by (not serving until GO)
    standing: bool = False  # a spare that said STANDBY: imported, waiting for GO
    active: int = 0  # connections at its last report
    progress_at: float = 0.0  # its serving loop's last sign of life
    aborted_at: float = 0.0  # --worker-timeout: SIGABRT sent then

    def __str__(self) -> str:
        if self.inprocess:
            return f"this process's server (generation {self.generation})"
        return f"worker {self.key} (generation {self.generation})"

    @property
    def serving(self) -> bool:
        """Meant to keep serving: not told to stop, not being recycled, not a spare."""
        return not self.told and not self.recycling and not self.spare


@dataclass(frozen=True)
class Exit:
    """How a member ended, as the driver saw it."""

    code: int | None  # os.waitstatus_to_exitcode: -N for signal N
    how: str  # "exit code 3", "killed by SIGKILL"
    why_not_ready: str = ""  # for a member that never said READY
    failure: str = ""  # the reason it gave for that (FAILED), if any
    reported: bool = False  # it sent its drain report
    served: int = 0  # during its drain
    forced: int = 0
    lost: int = 0
    requests: int = 0  # in all its life


class Effects(Protocol):
    """What the driver does for the machine.  Never calls back into it."""

    def spawn(self, generation: int, spare: bool = False) -> int | None:
        """Start a worker of ``generation`` (``spare``: to stand by until GO); its key,
        or None if it could not start."""

    def send(self, key: int, *words: object) -> None:
        """Send a channel message (GO, LAMEDUCK, STOP shared|sweep DEADLINE, FORCE N)."""

    def kill(self, key: int, signum: int) -> None:
        """Signal a worker process (never this process's own server)."""

    def abandon(self, key: int) -> None:
        """Kill a worker that never served, and forget it: no exit event follows."""

    def filter_listener(self) -> None:
        """Put the drop-all filter on the shared listener."""

    def shut_listener(self) -> None:
        """Shut the shared listener for everyone."""

    def notify(self, *fields: str) -> None:
        """sd_notify."""

    def stop_alone(self, signum: int) -> int:
        """The one-process stop (this process's server is the only member); its exit code."""


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Core(Protocol):
    """The machine as its reload and its stop see it: its state, and the few
    transitions they ask of it.  Not thread-safe: the supervisor's main loop is
    the only caller, as for the whole machine."""

    config: Config
    effects: Effects
    status: ServerStatus
    target: int
    members: dict[int, Member]
    phase: Phase
    generation: int
    fatal: str
    exit_code: int | None

    def retire(self, member: Member, now: float) -> None: ...

    def abandon(self, member: Member) -> None: ...

    def publish(self) -> None: ...

    def forget_reload(self) -> None:
        """The reload in progress has ended: the machine has none."""

    def reload_ended(self, now: float) -> None:
        """After a reload's report: the next one, if a HUP asked meanwhile."""
