"""The instance state machine: exactly the listed transitions are legal."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.supervise.states import ALIVE, TRANSITIONS, IllegalTransition, State, check_transition

S = State
LEGAL = {
    (S.STOPPED, S.STARTING), (S.STOPPED, S.BACKOFF), (S.STOPPED, S.CRASHLOOP),
    (S.STARTING, S.RUNNING), (S.STARTING, S.STOPPING), (S.STARTING, S.BACKOFF),
    (S.STARTING, S.CRASHLOOP), (S.STARTING, S.EXITED), (S.STARTING, S.STARTING),
    (S.RUNNING, S.STOPPING), (S.RUNNING, S.BACKOFF), (S.RUNNING, S.CRASHLOOP),
    (S.RUNNING, S.STARTING), (S.RUNNING, S.EXITED),
    (S.STOPPING, S.STOPPED),
    (S.BACKOFF, S.STARTING), (S.BACKOFF, S.STOPPED),
    (S.CRASHLOOP, S.STARTING), (S.CRASHLOOP, S.STOPPED),
    (S.EXITED, S.STARTING), (S.EXITED, S.STOPPED),
    # start order (`after`): a start waits for its dependencies, or is stopped meanwhile
    (S.STOPPED, S.WAITING), (S.BACKOFF, S.WAITING), (S.CRASHLOOP, S.WAITING), (S.EXITED, S.WAITING),
    (S.WAITING, S.STARTING), (S.WAITING, S.STOPPED),
}
ILLEGAL = sorted(set(itertools.product(State, State)) - LEGAL, key=lambda p: (p[0].value, p[1].value))


@pytest.mark.parametrize("old,new", sorted(LEGAL, key=lambda p: (p[0].value, p[1].value)),
                         ids=lambda s: s.value)
def test_legal_transition_accepted(old, new):
    check_transition(old, new)


@pytest.mark.parametrize("old,new", ILLEGAL, ids=lambda s: s.value)
def test_illegal_transition_raises(old, new):
    with pytest.raises(IllegalTransition, match=f"^{old.value} -> {new.value}$"):
        check_transition(old, new)


@pytest.mark.parametrize("old,new", [
    (S.RUNNING, S.STOPPED),     # must go through STOPPING
    (S.RUNNING, S.RUNNING),
    (S.STOPPED, S.RUNNING),     # must go through STARTING
    (S.STOPPED, S.STOPPED),
    (S.STOPPING, S.RUNNING),
    (S.BACKOFF, S.RUNNING),
    (S.EXITED, S.RUNNING),
    (S.STARTING, S.STOPPED),    # a stop goes through STOPPING, even before the spawn is sent
    (S.STOPPING, S.STARTING),   # a restart goes through STOPPED
])
def test_notable_illegal_transitions(old, new):
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_table_matches_and_covers_every_state():
    assert set(TRANSITIONS) == set(State)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL


def test_alive_states():
    assert ALIVE == {S.STARTING, S.RUNNING, S.STOPPING}
