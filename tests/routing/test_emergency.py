"""The emergency path: an immediate auto-reply in the patient's language, the emergency banner, a
call-back at the top of the triage queue and a page to whoever is on call for nurse triage."""

from __future__ import annotations

from sqlalchemy import select

from lockbox.messaging.models import Participant
from lockbox.routing.models import RoutingDecision
from tests.routing.conftest import Routing

CHEST = ("Help", "I have crushing chest pain going down my left arm and I can't breathe")
PECHO = ("Ayuda", "Tengo un dolor muy fuerte en el pecho y no puedo respirar")
RASH = ("Rash", "I have had a mild itchy rash on my forearm for a week. No fever. Should I make an appointment?")


def test_emergency_in_english(routing: Routing) -> None:
    r, c = routing, routing.c
    older = r.send(c.patient, *RASH)
    out = r.send(c.patient, *CHEST)
    assert out["routing"]["urgency"] == "emergency" and out["routing"]["pool"] == "nurse-triage"
    assert out["routing"]["rule"] == "emergency"
    assert "911" in out["auto_reply"] and "not for emergencies" in out["auto_reply"]
    detail = r.api(c.patient).get(f"/threads/{out['id']}").json()
    assert detail["emergency"] is True and detail["urgent"] is True
    assert [(m["kind"], m["sender"]["role"]) for m in detail["messages"]] == [("message", "patient"),
                                                                              ("auto_reply", "system")]
    assert detail["messages"][1]["body"] == out["auto_reply"]
    # The call-back heads the triage queue.
    queue = r.api(c.nurse).get("/pools/nurse-triage/threads").json()
    assert [t["id"] for t in queue] == [out["id"], older["id"]]
    assert queue[0]["callback_due"] is not None and queue[1]["callback_due"] is None
    # A page to the on-call responder, who can now open the thread.
    pages = r.jobs("notify.page")
    assert [j.payload for j in pages] == [{"user_id": r.oncall_doc.id, "thread_id": out["id"], "reason": "emergency"}]
    assert r.api(r.oncall_doc).get(f"/threads/{out['id']}").status_code == 200
    raised = r.audit("routing.emergency.raise")
    assert raised[-1].subject_id == out["id"] and raised[-1].details["paged"] == [r.oncall_doc.id]
    # The nurse calls back.
    done = r.api(c.nurse).post(f"/threads/{out['id']}/callback/complete")
    assert done.status_code == 200 and done.json()["completed_at"] is not None
    assert r.api(c.nurse).get("/pools/nurse-triage/threads").json()[0]["callback_due"] is None
    assert r.api(c.nurse).post(f"/threads/{out['id']}/callback/complete").status_code == 404
    assert r.audit("routing.callback.complete")[-1].actor_id == c.nurse.id


def test_emergency_auto_reply_in_spanish(routing: Routing) -> None:
    out = routing.send(routing.c.patient, *PECHO)
    assert out["routing"]["urgency"] == "emergency"
    assert "911" in out["auto_reply"] and "no es para emergencias" in out["auto_reply"]
    assert "departamento de emergencias" in out["auto_reply"]


def test_no_one_on_call_pages_the_triage_lead(routing: Routing, db) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import delete

    from lockbox.directory.models import OnCallShift

    db.write_sync(lambda s: s.execute(delete(OnCallShift)))
    out = routing.send(routing.c.patient, *CHEST)
    assert [j.payload["user_id"] for j in routing.jobs("notify.page")] == [routing.lead.id]
    assert out["routing"]["assignee"] == "nina.nurse"


def test_a_reply_that_turns_emergent_retriages_the_thread(routing: Routing) -> None:
    r, c = routing, routing.c
    out = r.send(c.patient, *RASH)
    assert out["routing"]["urgency"] == "routine"
    calm = r.api(c.patient).post(f"/threads/{out['id']}/messages", json={"body": "Thanks, it is a bit better."})
    assert calm.status_code == 201 and calm.json()["auto_reply"] is None
    count = r.query(lambda s: len(list(s.scalars(select(RoutingDecision.id)
                                                 .where(RoutingDecision.thread_id == out["id"])))))
    assert count == 1  # a calm reply records no decision
    worse = r.api(c.patient).post(f"/threads/{out['id']}/messages",
                                  json={"body": "Now my throat is swelling and I can't breathe"})
    assert worse.status_code == 201 and "911" in worse.json()["auto_reply"]
    detail = r.api(c.patient).get(f"/threads/{out['id']}").json()
    assert detail["emergency"] is True and detail["routing"]["urgency"] == "emergency"
    assert [m["kind"] for m in detail["messages"]] == ["message", "message", "message", "auto_reply"]
    assert len(r.jobs("notify.page")) == 1
    assert r.api(c.nurse).get("/pools/nurse-triage/threads").json()[0]["callback_due"] is not None
    history = r.api(c.nurse).get(f"/threads/{out['id']}/routing").json()
    assert [h["trigger"] for h in history] == ["message", "reply"]
    # Still emergent while the call-back waits: no second page, no second auto-reply.
    again = r.api(c.patient).post(f"/threads/{out['id']}/messages", json={"body": "I still can't breathe"})
    assert again.json()["auto_reply"] is None and len(r.jobs("notify.page")) == 1
    members = r.query(lambda s: set(s.scalars(select(Participant.user_id)
                                              .where(Participant.thread_id == out["id"]))))
    assert r.oncall_doc.id in members


def test_a_message_addressed_to_the_doctor_is_still_checked(routing: Routing) -> None:
    r, c = routing, routing.c
    out = r.send(c.patient, *CHEST, to=["dr.house"], confirm_recipients=True)
    assert out["routing"]["urgency"] == "emergency" and out["routing"]["pool"] == "nurse-triage"
    assert "911" in out["auto_reply"] and len(r.jobs("notify.page")) == 1
    calm = r.send(c.patient, *RASH, to=["dr.house"])
    assert calm["routing"]["rule"] == "addressed" and calm["auto_reply"] is None
