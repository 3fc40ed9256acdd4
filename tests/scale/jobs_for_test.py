"""Job kinds for the worker tests, imported into ``lockbox worker`` processes before they start.

``test.count`` inserts a row keyed by the job, in the job's own unit: a second run would collide.
``test.stall`` does the same after hanging, in a worker started with LOCKBOX_TEST_STALL=1, long
enough to be killed mid-job. ``test.announce`` publishes an event after commit. The lease is cut
to 2 s so a dead worker's job is re-run quickly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lockbox.db.uow import publish
from lockbox.directory.models import Location
from lockbox.jobs import service

LEASE_S = 2
service.LEASE_S = LEASE_S


def _count(session: Session, payload: dict[str, Any]) -> None:
    time.sleep(0.005)  # a little work, so both workers get some
    session.add(Location(id=f"job-{payload['n']}", name="made by a job"))


def _stall(session: Session, payload: dict[str, Any]) -> None:
    if os.environ.get("LOCKBOX_TEST_STALL") == "1":
        Path(os.environ["LOCKBOX_DATA_DIR"], f"started-{payload['n']}-{os.getpid()}").touch()
        time.sleep(600)
    session.add(Location(id=f"job-{payload['n']}", name="made by a job"))


def _announce(session: Session, payload: dict[str, Any]) -> None:
    publish(session, [payload["user"]], {"type": "probe", "thread_id": payload["n"]})


service.register("test.count", _count)
service.register("test.announce", _announce)
service.register("test.stall", _stall)
