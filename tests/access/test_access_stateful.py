"""No sequence of actions lets anyone read a thread they should not (hypothesis stateful test).

Staff and patients of several roles, teams and pools start threads, reply, claim, release and
transfer them, break the glass, join and leave pools and care teams, and time passes. A model
tracks who takes part in what and applies ARCHITECTURE section 1 on its own (it shares no code with
lockbox.access.policy); after every action the API must agree with it: 404 for what the model
hides, the content for what it shows, and the thread list exactly the model's.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from lockbox.app import create_app
from lockbox.clock import FrozenClock
from lockbox.config import Settings
from lockbox.db import Database
from lockbox.directory.models import CareTeamMember, Pool, PoolMember
from lockbox.identity import sessions
from lockbox.identity.models import User
from tests.factories import Person, make_team, make_user

# ARCHITECTURE section 1, written out again on purpose: the model must not borrow the code it checks.
CLINICAL = {"physician", "app", "nurse", "pharmacist", "medical_assistant", "therapist", "case_manager",
            "social_worker"}
NON_CLINICAL = {"scheduler", "billing"}
BREAK_GLASS = timedelta(hours=8)
# Bounded for CI (about 40 s); LOCKBOX_STATEFUL_EXAMPLES=200 for a deeper, randomised search.
EXAMPLES = int(os.environ.get("LOCKBOX_STATEFUL_EXAMPLES", "12"))
POOLS = ("nurse-triage", "medication", "scheduling", "billing")
PATIENT_QUESTIONS = (
    ("Appointment", "Can I move my appointment to next week?"),
    ("Bill", "I have a question about the bill I got in the mail."),
    ("Refill", "Please refill my lisinopril prescription."),
    ("Knee", "My knee has been a bit sore since I started running."),
    ("Results", "Are my lab results back yet?"),
)
REPLIES = ("Thanks, noted.", "I have crushing chest pain and cannot breathe.")
CONTENT_ROLES = CLINICAL | NON_CLINICAL


@dataclass
class ModelThread:
    id: str
    patient: str | None
    care_team: str | None
    pool: str | None
    assignee: str | None
    members: set[str]
    grants: dict[str, datetime] = field(default_factory=dict)
    routed: bool = False  # the engine routed it (a patient wrote it, or the patient has replied)


@dataclass
class World:
    """The app under test, shared by every example (each example builds its own people)."""

    client: TestClient
    db: Database
    clock: FrozenClock


WORLD: World | None = None
_examples = itertools.count(1)


class AccessRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert WORLD is not None
        self.client, self.db, self.clock = WORLD.client, WORLD.db, WORLD.clock
        self.people: dict[str, Person] = {}  # by user id
        self.role: dict[str, str] = {}
        self.teams: dict[str, set[str]] = {}
        self.patient_team: dict[str, str] = {}
        self.pools: dict[str, set[str]] = {}
        self.leads: dict[str, str | None] = {}
        self.threads: list[ModelThread] = []

    # -- the clinic of this example ---------------------------------------------------------------------

    @initialize()
    def clinic(self) -> None:
        db = self.db
        n = next(_examples)
        team_a, team_b = make_team(db, f"team-a-{n}"), make_team(db, f"team-b-{n}")

        def person(role: str, teams: tuple[str, ...] = (), pcp: Person | None = None) -> Person:
            p = make_user(db, role, care_teams=list(teams), pcp=pcp)
            self.people[p.id], self.role[p.id] = p, role
            for t in teams if role != "patient" else ():
                self.teams.setdefault(t, set()).add(p.id)
            if role == "patient" and teams:
                self.patient_team[p.id] = teams[0]
            return p

        self.teams = {team_a: set(), team_b: set()}
        doc_a = person("physician", (team_a,))
        person("physician", (team_b,))
        nurse = person("nurse", (team_a,))
        lead = person("nurse")
        pharmacist = person("pharmacist")
        person("medical_assistant", (team_b,))
        scheduler = person("scheduler")
        biller = person("billing")
        person("compliance")
        person("admin")
        person("patient", (team_a,), pcp=doc_a)
        person("patient", (team_b,))
        members = {"nurse-triage": {nurse.id}, "medication": {pharmacist.id}, "scheduling": {scheduler.id},
                   "billing": {biller.id}}
        self.pools = {p: set(m) for p, m in members.items()}
        self.leads = {p: None for p in POOLS}
        self.leads["nurse-triage"] = lead.id

        def _pools(session: Session) -> None:
            # Pool ids are the routing rules' own, so the pools are shared: this example's people only.
            for pool in POOLS:
                if session.get(Pool, pool) is None:
                    session.add(Pool(id=pool, name=pool.title(), roles=[]))
            session.flush()
            session.execute(delete(PoolMember))
            session.execute(update(Pool).values(lead_id=None))
            session.execute(update(Pool).where(Pool.id == "nurse-triage").values(lead_id=lead.id))
            for pool, ids in members.items():
                session.add_all(PoolMember(pool_id=pool, user_id=uid) for uid in ids)

        db.write_sync(_pools)

    # -- the model ----------------------------------------------------------------------------------------

    def may_read(self, uid: str, t: ModelThread) -> bool:
        role = self.role[uid]
        if role == "patient":
            return t.patient == uid
        if role not in CLINICAL | NON_CLINICAL:
            return False
        if uid in t.members or t.assignee == uid:
            return True
        if t.pool is not None and (uid in self.pools.get(t.pool, set()) or self.leads.get(t.pool) == uid):
            return True
        if role in NON_CLINICAL:
            return False
        if t.care_team is not None and uid in self.teams.get(t.care_team, set()):
            return True
        return t.grants.get(uid, self.clock.now()) > self.clock.now()

    def may_take(self, uid: str, t: ModelThread) -> bool:
        if t.pool is not None:
            return uid in self.pools.get(t.pool, set()) or self.leads.get(t.pool) == uid
        return t.care_team is not None and uid in self.teams.get(t.care_team, set())

    def staff(self) -> list[str]:
        return [u for u, r in self.role.items() if r != "patient"]

    def user_id(self, username_or_id: str | None) -> str | None:
        if username_or_id is None:
            return None
        by_name = {p.username: u for u, p in self.people.items()}
        return by_name.get(username_or_id, username_or_id)

    def call(self, method: str, uid: str, path: str, **kw: Any) -> Any:
        token = self.people[uid].token
        r = self.client.request(method, "/api/v1" + path, headers={"Authorization": f"Bearer {token}"}, **kw)
        assert r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.status_code != 401, "sessions are kept alive by the test"
        return r

    def check_read(self, uid: str, t: ModelThread) -> None:
        r = self.call("GET", uid, f"/threads/{t.id}")
        expected = self.may_read(uid, t)
        assert (r.status_code == 200) == expected, (self.role[uid], r.status_code, expected, t)
        if not expected:
            assert r.status_code == 404 and r.json()["error"] == "not_found"  # existence does not leak
        else:
            assert r.json()["messages"], "a readable thread shows its messages"

    # -- actions ------------------------------------------------------------------------------------------

    @rule(data=st.data(), question=st.sampled_from(PATIENT_QUESTIONS))
    def patient_writes(self, data: st.DataObject, question: tuple[str, str]) -> None:
        uid = data.draw(st.sampled_from([u for u, r in self.role.items() if r == "patient"]))
        r = self.call("POST", uid, "/threads", json={"subject": question[0], "body": question[1]})
        assert r.status_code == 201, r.text
        routing = r.json()["routing"]
        # Routing may bring people in (the patient's PCP for results, say): the thread shows its members.
        shown = self.call("GET", uid, f"/threads/{r.json()['id']}").json()
        members = {p["id"] for p in shown["participants"]}
        assert uid in members and members <= set(self.role), "only people of this clinic are brought in"
        self.threads.append(ModelThread(r.json()["id"], uid, self.patient_team.get(uid), routing["pool"],
                                        self.user_id(routing["assignee"]), members, routed=True))

    @rule(data=st.data(), with_patient=st.booleans(), to_pool=st.booleans())
    def staff_writes(self, data: st.DataObject, with_patient: bool, to_pool: bool) -> None:
        uid = data.draw(st.sampled_from(self.staff()))
        others = data.draw(st.lists(st.sampled_from([u for u in self.staff() if u != uid]), max_size=2, unique=True))
        patient = data.draw(st.sampled_from([u for u, r in self.role.items() if r == "patient"])) \
            if with_patient else None
        pool = data.draw(st.sampled_from(POOLS)) if to_pool else None
        to = [self.people[o].username for o in others] + ([pool] if pool else [])
        body: dict[str, Any] = {"subject": "Follow-up", "body": "Following up on your visit.", "to": to,
                                "confirm_recipients": True}
        if patient:
            body["patient"] = self.people[patient].username
        r = self.call("POST", uid, "/threads", json=body)
        may_send = self.role[uid] in CLINICAL | NON_CLINICAL
        no_content_recipient = any(self.role[o] not in CLINICAL | NON_CLINICAL for o in others)
        if not may_send or no_content_recipient or (not to and not patient):
            assert r.status_code in (400, 403, 404, 409, 422), r.text
            return
        assert r.status_code == 201, r.text
        self.threads.append(ModelThread(r.json()["id"], patient, self.patient_team.get(patient) if patient else None,
                                        pool, None, {uid, *others, *([patient] if patient else [])}))

    @precondition(lambda self: self.threads)
    @rule(data=st.data(), body=st.sampled_from(REPLIES))
    def someone_replies(self, data: st.DataObject, body: str) -> None:
        t = data.draw(st.sampled_from(self.threads))
        uid = data.draw(st.sampled_from(list(self.role)))
        r = self.call("POST", uid, f"/threads/{t.id}/messages", json={"body": body})
        if self.may_read(uid, t):
            assert r.status_code == 201, (self.role[uid], r.text)
            t.members.add(uid)  # whoever writes takes part
            if self.role[uid] == "patient":
                self.patient_reply_routes(t, emergent=body != REPLIES[0])
        else:
            assert r.status_code == 404, (self.role[uid], r.status_code, t)

    def patient_reply_routes(self, t: ModelThread, *, emergent: bool) -> None:
        """ARCHITECTURE section 6: a patient's first reply in a thread staff started is routed like a new
        message (a pool or assignee the thread has is kept; without a pool its care team joins it), and a
        reply that turns emergent re-triages the thread (the triage pool; its lead or on-call paged in).
        Which pool and responder is the classifier's and balancer's call, so the model reads them back, and
        checks they stay within those rules; from then on section 1 grants the pool what was routed to it."""
        assert t.patient is not None
        shown = self.call("GET", t.patient, f"/threads/{t.id}").json()
        pool, assignee = shown["pool"], self.user_id(shown["assignee"])
        members = {p["id"] for p in shown["participants"]}
        assert members >= t.members, "nobody is dropped from a thread"
        if not emergent and t.routed:  # an ordinary reply to a routed thread changes nobody's access
            assert (pool, assignee, members) == (t.pool, t.assignee, t.members), (pool, assignee, members, t)
        if not emergent and t.pool is not None:
            assert pool == t.pool, "routing keeps the pool a thread was sent to"
        if not emergent and t.assignee is not None:
            assert assignee == t.assignee, "routing keeps the thread's assignee"
        assert assignee is None or self.role.get(assignee) in CONTENT_ROLES, assignee
        may_join = {u for u in self.teams.get(t.care_team or "", set()) if self.role[u] in CONTENT_ROLES}
        for p in [x for x in (pool, "nurse-triage" if emergent else None) if x is not None]:
            lead = self.leads.get(p)
            may_join |= self.pools.get(p, set()) | ({lead} if lead else set())
        assert members - t.members <= may_join, ("brought in from outside the care team and pools",
                                                 {self.role[u] for u in members - t.members - may_join})
        t.pool, t.assignee, t.members, t.routed = pool, assignee, members, True

    @precondition(lambda self: self.threads)
    @rule(data=st.data())
    def someone_reads(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.threads))
        uid = data.draw(st.sampled_from(list(self.role)))
        self.check_read(uid, t)
        r = self.call("POST", uid, f"/threads/{t.id}/read")
        assert r.status_code == (204 if self.may_read(uid, t) else 404)

    @precondition(lambda self: self.threads)
    @rule(data=st.data())
    def staff_claims(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.threads))
        uid = data.draw(st.sampled_from(list(self.role)))
        r = self.call("POST", uid, f"/threads/{t.id}/claim")
        if not self.may_read(uid, t) or self.role[uid] == "patient":
            assert r.status_code == 404, (self.role[uid], r.status_code)
            return
        assert r.status_code == (200 if self.may_take(uid, t) else 403), (self.role[uid], r.text, t)
        if r.status_code == 200:
            t.assignee = uid

    @precondition(lambda self: self.threads)
    @rule(data=st.data())
    def staff_releases(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.threads))
        uid = data.draw(st.sampled_from(self.staff()))
        r = self.call("POST", uid, f"/threads/{t.id}/release")
        if not self.may_read(uid, t):
            assert r.status_code == 404
            return
        assert r.status_code in (200, 403), r.text
        if r.status_code == 200:
            t.assignee = None

    @precondition(lambda self: self.threads)
    @rule(data=st.data())
    def staff_transfers(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.threads))
        uid = data.draw(st.sampled_from(self.staff()))
        target = data.draw(st.sampled_from([u for u in self.staff() if u != uid]))
        r = self.call("POST", uid, f"/threads/{t.id}/transfer", json={"to": self.people[target].username})
        if not self.may_read(uid, t):
            assert r.status_code == 404
            return
        assert r.status_code in (200, 400, 403, 422), r.text
        if r.status_code == 200:
            assert self.role[target] in CLINICAL | NON_CLINICAL
            if not self.may_take(target, t):
                t.members.add(target)  # a clinician brought in from outside takes part
            t.assignee = target

    @precondition(lambda self: self.threads)
    @rule(data=st.data())
    def someone_breaks_the_glass(self, data: st.DataObject) -> None:
        t = data.draw(st.sampled_from(self.threads))
        uid = data.draw(st.sampled_from(list(self.role)))
        r = self.call("POST", uid, f"/threads/{t.id}/break-glass",
                      json={"reason": "Patient arrived unconscious in the emergency department."})
        if self.role[uid] in CLINICAL:
            assert r.status_code == 204, r.text
            t.grants[uid] = self.clock.now() + BREAK_GLASS
        else:
            assert r.status_code == 404

    @rule(data=st.data(), join=st.booleans())
    def pool_membership_changes(self, data: st.DataObject, join: bool) -> None:
        pool = data.draw(st.sampled_from(POOLS))
        uid = data.draw(st.sampled_from(self.staff()))
        members = self.pools[pool]
        if join and uid not in members:
            self.db.write_sync(lambda s: s.add(PoolMember(pool_id=pool, user_id=uid)))
            members.add(uid)
        elif not join and uid in members:
            self.db.write_sync(lambda s: s.execute(delete(PoolMember).where(PoolMember.pool_id == pool,
                                                                            PoolMember.user_id == uid)))
            members.discard(uid)

    @rule(data=st.data(), join=st.booleans())
    def care_team_changes(self, data: st.DataObject, join: bool) -> None:
        team = data.draw(st.sampled_from(sorted(self.teams)))
        uid = data.draw(st.sampled_from([u for u in self.staff() if self.role[u] in CLINICAL]))
        members = self.teams[team]
        if join and uid not in members:
            self.db.write_sync(lambda s: s.add(CareTeamMember(care_team_id=team, user_id=uid)))
            members.add(uid)
        elif not join and uid in members:
            self.db.write_sync(lambda s: s.execute(delete(CareTeamMember).where(
                CareTeamMember.care_team_id == team, CareTeamMember.user_id == uid)))
            members.discard(uid)

    @rule(hours=st.sampled_from([1, 9]))
    def time_passes(self, hours: int) -> None:
        """Break-glass lasts eight hours; sessions are renewed, as people sign in again."""
        self.clock.advance(hours * 3600)
        renewed = self.db.write_sync(self._sign_in_again)
        for uid, token in renewed.items():
            self.people[uid].token = token

    def _sign_in_again(self, session: Session) -> dict[str, str]:
        tokens = {}
        for uid in self.people:
            user = session.get(User, uid)
            assert user is not None
            tokens[uid], _ = sessions.create_session(session, user=user, device="pytest", client_addr="testclient")
        return tokens

    # -- what must always hold ----------------------------------------------------------------------------

    @invariant()
    def thread_lists_match_the_model(self) -> None:
        if not self.threads:
            return
        ours = {t.id: t for t in self.threads}
        for uid in self.role:
            r = self.call("GET", uid, "/threads")
            if self.role[uid] not in CLINICAL | NON_CLINICAL | {"patient"}:
                assert r.status_code in (200, 403) and (r.status_code == 403 or not
                                                         {s["id"] for s in r.json()} & set(ours))
                continue
            listed = {s["id"] for s in r.json()} & set(ours)
            expected = {tid for tid, t in ours.items() if self.may_read(uid, t)}
            assert listed == expected, (self.role[uid], listed ^ expected)

    def teardown(self) -> None:
        # Every pair, once, through the thread itself (the invariant covered the lists).
        for t in self.threads:
            for uid in self.role:
                self.check_read(uid, t)


@pytest.fixture
def world(tmp_path: Path, sqlite_template: Path) -> Any:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    shutil.copy(sqlite_template, data_dir / "lockbox.db")
    cfg = Settings(env="test", data_dir=data_dir, smtp_gateway_port=0, rate_limits_enabled=False,
                   idle_timeout_s=24 * 3600)
    clock = FrozenClock()
    # No job workers: escalation timers would change assignments behind the model's back.
    app = create_app(cfg, clock=clock, migrate=False, workers=0)
    with TestClient(app, base_url="https://testserver") as client:
        yield World(client, app.state.lockbox.db, clock)


def test_no_sequence_of_actions_shows_a_thread_to_the_wrong_person(world: World) -> None:
    global WORLD
    WORLD = world
    try:
        run_state_machine_as_test(AccessRules, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=25, deadline=None, derandomize=EXAMPLES == 12,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        WORLD = None


def test_a_patients_reply_routes_a_staff_thread_and_the_model_follows(world: World) -> None:
    """The sequence the random search once failed on, kept: a physician writes to their patient, the patient
    answers, the answer is routed to the triage pool, so its lead (a nurse on no care team) may read it;
    then an emergent reply pages the triage pool in. Everyone's access is checked against the model."""
    global WORLD
    WORLD = world
    try:
        m = AccessRules()
        m.clinic()
        team = next(t for t in sorted(m.teams) if t.startswith("team-a"))
        doctor = next(u for u in m.teams[team] if m.role[u] == "physician")
        patient = next(u for u, t in m.patient_team.items() if t == team)
        lead = m.leads["nurse-triage"]
        assert lead is not None and m.role[lead] == "nurse"
        r = m.call("POST", doctor, "/threads", json={"subject": "Follow-up", "body": "How is the knee?",
                                                     "patient": m.people[patient].username,
                                                     "confirm_recipients": True})
        assert r.status_code == 201, r.text
        t = ModelThread(r.json()["id"], patient, team, None, None, {doctor, patient})
        m.threads.append(t)
        assert not m.may_read(lead, t)
        m.check_read(lead, t)
        for body in REPLIES:
            assert m.call("POST", patient, f"/threads/{t.id}/messages", json={"body": body}).status_code == 201
            m.patient_reply_routes(t, emergent=body != REPLIES[0])
            if body == REPLIES[0]:
                assert t.pool is not None and m.may_read(lead, t), "routed to a pool: its lead now reads it"
            for uid in m.role:
                m.check_read(uid, t)
            m.thread_lists_match_the_model()
    finally:
        WORLD = None
