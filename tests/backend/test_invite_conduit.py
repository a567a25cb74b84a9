"""The rendezvous state machine's pure functions, for what happens when a side leaves (the
commands' behaviour is tested in test_invite.py)."""

from __future__ import annotations

from parsec_server.backend.invite_conduit import (
    EMPTY_CONDUIT,
    ConduitBadOutcome,
    ConduitSlots,
    ConduitState,
    Listened,
    Talked,
    claimer_left,
    listen,
    talk,
    withdraw,
)

STEP_1 = ConduitState.STATE_1_WAIT_PEERS
STEP_2_1 = ConduitState.STATE_2_1_CLAIMER_HASHED_NONCE
STEP_4 = ConduitState.STATE_4_COMMUNICATE
G, K, K2 = b"G" * 32, b"K" * 32, b"2" * 32


def test_claimer_left_in_step_1_withdraws_its_key_only() -> None:
    slots = ConduitSlots(STEP_1, G, K)
    assert claimer_left(slots, K) == (ConduitSlots(STEP_1, G, None), None)


def test_claimer_left_in_step_1_leaves_another_claimers_key() -> None:
    assert claimer_left(ConduitSlots(STEP_1, G, K2), K) == (None, None)
    assert claimer_left(ConduitSlots(STEP_1, G, None), K) == (None, None)


def test_claimer_left_after_step_1_resets_the_conduit() -> None:
    for state in list(ConduitState)[1:]:
        assert claimer_left(ConduitSlots(state, b"", None), K) == (EMPTY_CONDUIT, None)


def test_withdraw_takes_back_our_step_1_key_only() -> None:
    assert withdraw(ConduitSlots(STEP_1, G, K), True, STEP_1, G) == (
        ConduitSlots(STEP_1, None, K),
        None,
    )
    assert withdraw(ConduitSlots(STEP_1, G, K), False, STEP_1, K) == (
        ConduitSlots(STEP_1, G, None),
        None,
    )
    # Not ours any more (reset and replaced), or the conduit has moved on.
    assert withdraw(ConduitSlots(STEP_1, K2, None), True, STEP_1, G) == (None, None)
    assert withdraw(ConduitSlots(STEP_2_1, None, None), True, STEP_1, G) == (None, None)
    # Later steps are left as they are.
    assert withdraw(ConduitSlots(STEP_2_1, b"", None), True, STEP_2_1, b"") == (None, None)


def test_greeter_holding_a_withdrawn_key_waits_then_pairs_with_the_next_claimer() -> None:
    # The claimer deposited K, then the greeter talked and found it.
    slots, talked = talk(ConduitSlots(STEP_1, None, K), True, STEP_1, G)
    assert talked == Talked(K)
    assert slots == ConduitSlots(STEP_1, G, K)
    # The claimer leaves before taking G.
    slots, _ = claimer_left(slots, K)
    assert slots == ConduitSlots(STEP_1, G, None)
    assert listen(slots, True, STEP_1, G, K) == (None, Listened(None))
    # A new claimer talks: it finds G and waits for the greeter to move the conduit on.
    slots, talked = talk(slots, False, STEP_1, K2)
    assert talked == Talked(G)
    assert slots == ConduitSlots(STEP_1, G, K2)
    assert listen(slots, False, STEP_1, K2, G) == (None, Listened(None))
    moved, listened = listen(slots, True, STEP_1, G, K)
    assert (moved, listened) == (ConduitSlots(STEP_2_1, None, None), Listened(K2))
    assert moved is not None
    assert listen(moved, False, STEP_1, K2, G) == (None, Listened(G))


def test_a_peer_replaced_after_step_1_is_still_invalid_state() -> None:
    """Only step 1 tolerates a change of peer: later, a change is a reset."""
    slots = ConduitSlots(STEP_2_1, b"", b"other")
    assert listen(slots, True, STEP_2_1, b"", b"hn") == (None, ConduitBadOutcome.INVALID_STATE)


def test_claimer_leaving_right_after_the_last_exchange_leaves_the_greeter_its_reply() -> None:
    """Step 4, the claimer first: it takes the greeter's payload, moves the conduit on and
    closes its connection before the greeter (who arrived second) reads the conduit. The
    exchange succeeded: the greeter still gets the claimer's payload, not `invalid_state`."""
    slots, talked = talk(ConduitSlots(STEP_4, None, None), False, STEP_4, b"")
    assert talked == Talked(None)
    assert slots is not None
    slots, talked = talk(slots, True, STEP_4, b"confirmation")
    assert talked == Talked(b"")
    assert slots is not None
    moved, listened = listen(slots, False, STEP_4, b"", None)
    assert (moved, listened) == (ConduitSlots(STEP_4, None, None), Listened(b"confirmation"))
    assert moved is not None
    assert claimer_left(moved, K) == (None, None)
    assert listen(moved, True, STEP_4, b"confirmation", b"") == (None, Listened(b""))


def test_claimer_leaving_between_two_steps_leaves_the_conduit_as_it_is() -> None:
    for state in list(ConduitState)[1:]:
        assert claimer_left(ConduitSlots(state, None, None), K) == (None, None)
    # With a payload of the current step deposited, by either side: reset.
    assert claimer_left(ConduitSlots(STEP_2_1, None, b"hn"), K) == (EMPTY_CONDUIT, None)
