"""Patients' replies checked for an emergency in a helper process: the same answer as in the server, and the
server checks the text itself whenever no helper can answer."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from fastapi.testclient import TestClient

from lockbox.config import Settings
from lockbox.routing.classify import emergency_check, warm_up
from lockbox.routing.classify.model import load_corpus
from lockbox.routing.screening import ScreeningPool, pool_of
from lockbox.routing.service import UNSCREENED
from tests.routing.conftest import Routing
from tests.routing.test_emergency import CHEST, PECHO, RASH

EXTRA = [CHEST[1], PECHO[1], RASH[1], "I am not having chest pain", "My grandfather had a stroke years ago",
         "Now my throat is swelling and I can't breathe", "x" * 20_000, "¿Puedo tomar ibuprofeno?"]


def _screen_all(pool: ScreeningPool, texts: list[str]) -> list[object]:
    async def run() -> list[object]:
        await pool.connect()
        try:
            return list(await asyncio.gather(*(pool.screen(t) for t in texts)))
        finally:
            pool.close()

    return asyncio.run(run())


def test_a_helper_answers_exactly_as_the_server_does() -> None:
    warm_up()
    texts = [r.body for r in load_corpus()] + EXTRA
    pool = ScreeningPool(1)
    assert pool.fork()
    try:
        answers = _screen_all(pool, texts)
    finally:
        pool.close()
    assert UNSCREENED not in answers
    assert answers == [emergency_check(t) for t in texts]
    assert any(a is not None for a in answers) and any(a is None for a in answers)
    assert pool.pids == []


def test_without_a_helper_the_reply_goes_unscreened() -> None:
    warm_up()
    idle = ScreeningPool(1)  # never forked
    assert _screen_all(idle, [CHEST[1]]) == [UNSCREENED]

    pool = ScreeningPool(1)
    assert pool.fork()
    try:
        os.kill(pool.pids[0], signal.SIGKILL)
        os.waitpid(pool.pids[0], 0)

        async def run() -> list[object]:
            await pool.connect()
            first = await pool.screen(CHEST[1])  # the pipe breaks under it: released, not lost
            return [first, await pool.screen(CHEST[1])]

        assert asyncio.run(run()) == [UNSCREENED, UNSCREENED]
        assert not pool.ready
    finally:
        pool.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.triage_processes = 1
    return settings


def test_replies_through_the_api_with_a_helper(routing: Routing, client: TestClient) -> None:
    pool = pool_of(client.app)
    assert pool is not None
    deadline = time.monotonic() + 120
    while not pool.ready and time.monotonic() < deadline:  # forked once the triage warm-up is done
        time.sleep(0.05)
    assert pool.ready
    r, c = routing, routing.c
    out = r.send(c.patient, *RASH)
    before = pool.answered
    # The first reply of a session is checked in the server (nobody knows yet that it is a patient's).
    calm = r.api(c.patient).post(f"/threads/{out['id']}/messages", json={"body": "Thanks, it is a bit better."})
    assert calm.status_code == 201 and calm.json()["auto_reply"] is None
    assert pool.answered == before
    worse = r.api(c.patient).post(f"/threads/{out['id']}/messages",
                                  json={"body": "Now my throat is swelling and I can't breathe"})
    assert worse.status_code == 201 and "911" in worse.json()["auto_reply"]
    assert pool.answered == before + 1
    detail = r.api(c.patient).get(f"/threads/{out['id']}").json()
    assert detail["emergency"] is True and detail["routing"]["urgency"] == "emergency"
    assert len(r.jobs("notify.page")) == 1
    # Staff replies are never sent to the helper.
    nurse = r.api(c.nurse).post(f"/threads/{out['id']}/messages", json={"body": "Calling you now."})
    assert nurse.status_code == 201
    nurse = r.api(c.nurse).post(f"/threads/{out['id']}/messages", json={"body": "Can't breathe? Call 911."})
    assert nurse.status_code == 201 and nurse.json()["auto_reply"] is None
    assert pool.answered == before + 1
