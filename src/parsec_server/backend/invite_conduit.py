"""The invitation rendezvous ("conduit"), see protocol/30-commands-org-user-invite.md 7.6.

Greeter and claimer each deposit their payload for a step and get the peer's one back.
The state machine is written here once, as pure functions over the conduit's slots; each
storage runs them under its own lock (a row lock in PostgreSQL) and publishes a
"conduit updated" event whenever the slots changed, which wakes the waiting side.
A side whose connection closes takes its step-1 key back (`withdraw`), and a claimer that
leaves after step 1 resets the exchange (`claimer_left`), so that nobody pairs with a key
whose holder is gone (docs/deviations.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum, StrEnum, auto


class ConduitState(StrEnum):
    STATE_1_WAIT_PEERS = "1_WAIT_PEERS"
    STATE_2_1_CLAIMER_HASHED_NONCE = "2_1_CLAIMER_HASHED_NONCE"
    STATE_2_2_GREETER_NONCE = "2_2_GREETER_NONCE"
    STATE_2_3_CLAIMER_NONCE = "2_3_CLAIMER_NONCE"
    STATE_3_1_CLAIMER_TRUST = "3_1_CLAIMER_TRUST"
    STATE_3_2_GREETER_TRUST = "3_2_GREETER_TRUST"
    STATE_4_COMMUNICATE = "4_COMMUNICATE"


_STATES = list(ConduitState)


def next_state(state: ConduitState) -> ConduitState:
    if state is ConduitState.STATE_4_COMMUNICATE:
        return state  # step 4 repeats
    return _STATES[_STATES.index(state) + 1]


class ConduitBadOutcome(Enum):
    NOT_FOUND = auto()
    ALREADY_DELETED = auto()
    INVALID_STATE = auto()


@dataclass(frozen=True, slots=True)
class ConduitSlots:
    state: ConduitState
    greeter_payload: bytes | None
    claimer_payload: bytes | None

    def ours(self, is_greeter: bool) -> bytes | None:
        return self.greeter_payload if is_greeter else self.claimer_payload

    def peers(self, is_greeter: bool) -> bytes | None:
        return self.claimer_payload if is_greeter else self.greeter_payload

    def with_ours(self, is_greeter: bool, payload: bytes | None) -> ConduitSlots:
        if is_greeter:
            return replace(self, greeter_payload=payload)
        return replace(self, claimer_payload=payload)


EMPTY_CONDUIT = ConduitSlots(ConduitState.STATE_1_WAIT_PEERS, None, None)


@dataclass(frozen=True, slots=True)
class Talked:
    """Our payload is deposited; `peer_at_talk` is the peer's slot as it was then."""

    peer_at_talk: bytes | None


@dataclass(frozen=True, slots=True)
class Listened:
    """`payload` is the peer's payload for the step (None: keep waiting)."""

    payload: bytes | None


def talk(
    slots: ConduitSlots, is_greeter: bool, state: ConduitState, payload: bytes
) -> tuple[ConduitSlots | None, Talked | ConduitBadOutcome]:
    """(new slots or None if unchanged, outcome)."""
    if slots.state is not state or slots.ours(is_greeter) is not None:
        if state is not ConduitState.STATE_1_WAIT_PEERS:
            return None, ConduitBadOutcome.INVALID_STATE
        # Step 1 from either side restarts the whole exchange (the peer gets invalid_state).
        slots = EMPTY_CONDUIT
    return slots.with_ours(is_greeter, payload), Talked(slots.peers(is_greeter))


def listen(
    slots: ConduitSlots,
    is_greeter: bool,
    state: ConduitState,
    payload: bytes,
    peer_at_talk: bytes | None,
) -> tuple[ConduitSlots | None, Listened | ConduitBadOutcome]:
    ours, peers = slots.ours(is_greeter), slots.peers(is_greeter)
    if peer_at_talk is None:
        # We arrived first: we move the conduit on once the peer's payload is there.
        if slots.state is not state or ours != payload:
            return None, ConduitBadOutcome.INVALID_STATE
        if peers is not None:
            return ConduitSlots(next_state(state), None, None), Listened(peers)
        return None, Listened(None)
    # The peer arrived first: it moves the conduit on, then we return what it gave.
    if slots.state is next_state(state) and ours is None:
        return None, Listened(peer_at_talk)
    if (
        state is ConduitState.STATE_1_WAIT_PEERS
        and slots.state is state
        and ours == payload
        and peers != peer_at_talk
    ):
        # The peer we found has left (its key was withdrawn) or another one took its
        # place: we wait for (or pair with) the new one, as if we had arrived first.
        return listen(slots, is_greeter, state, payload, None)
    if slots.state is not state or ours != payload or peers != peer_at_talk:
        return None, ConduitBadOutcome.INVALID_STATE
    return None, Listened(None)


def withdraw(
    slots: ConduitSlots, is_greeter: bool, state: ConduitState, payload: bytes
) -> tuple[ConduitSlots | None, None]:
    """Our wait for `state` was abandoned (connection closed): at step 1, take our key back
    if it is still there, so that no peer arriving later pairs with a key nobody holds."""
    if (
        state is ConduitState.STATE_1_WAIT_PEERS
        and slots.state is state
        and slots.ours(is_greeter) == payload
    ):
        return slots.with_ours(is_greeter, None), None
    return None, None


def claimer_left(slots: ConduitSlots, claimer_key: bytes) -> tuple[ConduitSlots | None, None]:
    """A claimer connection that took part in the rendezvous (deposited `claimer_key` at
    step 1) has closed. At step 1 its key is withdrawn (a greeter waiting there keeps
    waiting, for the next claimer). Past step 1, while a payload of the current step is
    deposited, the exchange cannot go on without the claimer: the conduit is reset, as a
    reconnecting claimer's step 1 would do, and the greeter blocked in that step gets
    `invalid_state` ("peer reset") at once.

    Between two steps (no payload deposited) the conduit is left as it is: the claimer's
    last exchange completed, and the greeter, who arrived second in it, may not have read
    the conduit yet. It returns once it sees the conduit moved on (`listen`); a reset
    would make it answer `invalid_state` for an exchange that succeeded. That is how a
    rendezvous ends: the claimer closes its connection as soon as it has the greeter's
    last payload, often before the greeter's server task is woken (with PostgreSQL, by a
    NOTIFY delivered after the claimer's commit)."""
    if slots.state is ConduitState.STATE_1_WAIT_PEERS:
        return withdraw(slots, False, ConduitState.STATE_1_WAIT_PEERS, claimer_key)
    if slots.greeter_payload is None and slots.claimer_payload is None:
        return None, None
    return EMPTY_CONDUIT, None
