"""Instance states, the only transitions allowed between them, and what follows a stop."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Where one instance is in its life."""

    WAITING = "waiting"        # its template's `after` dependencies are not ready yet
    STARTING = "starting"      # spawn requested, no pid yet (or waiting for READY=1)
    RUNNING = "running"        # a live process
    STOPPING = "stopping"      # stop signal sent, waiting for the exit
    BACKOFF = "backoff"        # died early, restart timer pending
    CRASHLOOP = "crash-looping"  # like BACKOFF, but the delay has reached backoff.max
    STOPPED = "stopped"        # stopped on purpose; stays down until started
    EXITED = "exited"          # ended and its restart policy says not to restart


class Then(enum.Enum):
    """What follows the stop in progress: stay stopped, start again, or drop the slot."""

    STOP = "stop"
    RESTART = "restart"
    REMOVE = "remove"


# Exactly the moves the supervisor makes: a stop always ends in STOPPED (a restart goes
# STOPPED -> STARTING, or STOPPED -> BACKOFF after a limit breach right at start), and a
# failed spawn may retry at once (STARTING -> STARTING).
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.BACKOFF, State.CRASHLOOP, State.WAITING}),
    State.WAITING: frozenset({State.STARTING, State.STOPPED}),
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.BACKOFF, State.CRASHLOOP,
                               State.EXITED, State.STARTING}),
    State.RUNNING: frozenset({State.STOPPING, State.BACKOFF, State.CRASHLOOP, State.STARTING,
                              State.EXITED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED, State.WAITING}),
    State.CRASHLOOP: frozenset({State.STARTING, State.STOPPED, State.WAITING}),
    State.EXITED: frozenset({State.STARTING, State.STOPPED, State.WAITING}),
}

ALIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug, never a user error."""


def check_transition(old: State, new: State) -> None:
    """Raise `IllegalTransition` unless old -> new is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.value} -> {new.value}")
