"""Choosing the responder inside a pool: pure table-driven cases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lockbox.routing.balance import Candidate, choose

T1 = datetime(2026, 1, 7, 9, tzinfo=UTC)
T2 = datetime(2026, 1, 7, 10, tzinfo=UTC)


@pytest.mark.parametrize(("people", "exclude", "expected", "reason"), [
    ([], [], None, "no_candidates"),
    ([Candidate("a"), Candidate("b")], [], None, "nobody_eligible"),  # nobody on duty or on call
    ([Candidate("a", on_duty=True, load=3), Candidate("b", on_duty=True, load=1)], [], "b", "least_load"),
    # The patient's care team first, even with more work.
    ([Candidate("a", on_duty=True, load=0), Candidate("b", on_duty=True, on_team=True, load=5)], [], "b",
     "care_team"),
    # A care-team member off duty does not count; the pool takes it.
    ([Candidate("a", on_duty=True, load=4), Candidate("b", on_team=True, load=0)], [], "a", "least_load"),
    # Nobody on duty: whoever is on call; someone on duty before anyone only on call.
    ([Candidate("a", on_duty=True, load=5), Candidate("b", on_call=True, on_team=True)], [], "a", "least_load"),
    ([Candidate("a", on_call=True, load=5), Candidate("b", on_call=True, on_team=True, load=6)], [], "b",
     "care_team"),
    ([Candidate("a", load=0), Candidate("b", on_call=True, load=9)], [], "b", "on_call"),
    # Ties: least recently assigned, and never assigned before anyone.
    ([Candidate("a", on_duty=True, last_assigned_at=T2), Candidate("b", on_duty=True, last_assigned_at=T1)], [],
     "b", "least_load"),
    ([Candidate("a", on_duty=True, last_assigned_at=T1), Candidate("b", on_duty=True)], [], "b", "least_load"),
    ([Candidate("b", on_duty=True), Candidate("a", on_duty=True)], [], "a", "least_load"),
    ([Candidate("a", on_duty=True), Candidate("b", on_duty=True, load=2)], ["a"], "b", "least_load"),
])
def test_choose(people: list[Candidate], exclude: list[str], expected: str | None, reason: str) -> None:
    pick = choose(people, exclude=exclude)
    assert (pick.assignee_id, pick.reason) == (expected, reason)


def test_assignments_rotate_fairly() -> None:
    people = {u: Candidate(u, on_duty=True) for u in "abc"}
    order = []
    for i in range(6):
        pick = choose(list(people.values()))
        assert pick.assignee_id is not None
        order.append(pick.assignee_id)
        c = people[pick.assignee_id]
        # Work gets answered as fast as it comes: the load stays level, recency decides.
        people[c.user_id] = Candidate(c.user_id, on_duty=True, last_assigned_at=datetime(2026, 1, 1, i, tzinfo=UTC))
    assert order == ["a", "b", "c", "a", "b", "c"]
