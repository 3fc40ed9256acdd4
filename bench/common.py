"""What the benchmarks share: a clinic of a given size built with the tests' factories, a throwaway
PostgreSQL database, and a process's CPU and memory read from /proc.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from tests.factories import Person, make_pool, make_team, make_user  # noqa: E402
from tests.serverproc import children  # noqa: E402

from lockbox.db import Database  # noqa: E402

PG_ADMIN_DSN = os.environ.get("LOCKBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# Staff per 100 staff members: mostly nurses, as in primary care. Scheduling and billing staff belong to no
# care team; they see only the threads routed to their pools.
STAFF_MIX = {"physician": 15, "nurse": 60, "medical_assistant": 10, "pharmacist": 5, "scheduler": 6, "billing": 4}
ON_A_TEAM = ("physician", "nurse", "medical_assistant", "pharmacist")
# The pools the shipped routing rules fill (routing/default_rules.yaml), the roles that work each queue in order
# of preference, and how many people a clinic puts on it: a queue is a handful of people, not a department.
POOLS: dict[str, tuple[tuple[str, ...], int]] = {
    "nurse-triage": (("nurse",), 8),
    "medication": (("pharmacist", "nurse"), 4),
    "results": (("medical_assistant", "nurse"), 4),
    "scheduling": (("scheduler",), 6),
    "billing": (("billing",), 4),
    "front-desk": (("scheduler",), 4),
}


@dataclass
class ScaledClinic:
    """People of a clinic of a given size. ``team_of`` maps a staff member's or patient's id to their care team."""

    teams: list[str]
    staff: dict[str, list[Person]]
    patients: list[Person]
    pools: dict[str, list[Person]]
    team_of: dict[str, str] = field(default_factory=dict)

    def on_team(self, team: str, role: str) -> list[Person]:
        return [p for p in self.staff[role] if self.team_of.get(p.id) == team]

    @property
    def everyone(self) -> list[Person]:
        return [*self.patients, *(p for people in self.staff.values() for p in people)]


def seed_clinic(db: Database, *, users: int, teams: int = 10, patient_share: float = 0.8,
                pool_sizes: dict[str, tuple[tuple[str, ...], int]] = POOLS) -> ScaledClinic:
    """``users`` signed-in people: ``patient_share`` of them patients spread over ``teams`` care teams (each with
    a physician of the team as PCP), the rest staff in STAFF_MIX, and the routing rules' pools."""
    team_ids = [f"team-{t}" for t in range(teams)]
    for team in team_ids:
        make_team(db, team)
    staff_n = max(len(STAFF_MIX), users - int(users * patient_share))
    counts = {role: max(1, staff_n * share // 100) for role, share in STAFF_MIX.items()}
    counts["nurse"] += staff_n - sum(counts.values())  # rounding goes to the nurses
    clinic = ScaledClinic(team_ids, {role: [] for role in STAFF_MIX}, [], {})
    for role, n in counts.items():
        for i in range(n):
            team = team_ids[i % teams] if role in ON_A_TEAM else None
            person = make_user(db, role, username=f"load.{role}{i}", care_teams=[team] if team else [])
            clinic.staff[role].append(person)
            if team:
                clinic.team_of[person.id] = team
    for i in range(users - staff_n):
        team = team_ids[i % teams]
        doctors = clinic.on_team(team, "physician") or clinic.staff["physician"]
        person = make_user(db, "patient", username=f"load.patient{i}", care_teams=[team],
                           pcp=doctors[(i // teams) % len(doctors)], mrn=f"L{i:07d}")
        clinic.patients.append(person)
        clinic.team_of[person.id] = team
    taken: set[str] = set()
    for pool, (roles, size) in pool_sizes.items():
        wanted = [p for role in roles for p in clinic.staff[role]]
        # People on no other queue first: a nurse on triage does not also work the results queue.
        members = ([p for p in wanted if p.id not in taken] + [p for p in wanted if p.id in taken])[:size]
        taken |= {p.id for p in members}
        make_pool(db, pool, list(roles), members=members, lead=members[0] if members else None)
        clinic.pools[pool] = members
    return clinic


@contextmanager
def pg_database(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one run (on ``LOCKBOX_TEST_PG``'s server), dropped afterwards."""
    name = f"lockbox_{tag}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].split("://", 1)[1]
    try:
        yield f"postgresql+psycopg://{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process (fields 14 and 15 of /proc/PID/stat); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> float:
    """CPU of a server's live child processes (its writer process and emergency-check helpers)."""
    return sum(cpu_seconds(child) for child in children(pid))  # 0 for one that exited meanwhile


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids_named(name: str) -> list[int]:
    """Every process whose command is ``name`` (``postgres``, ``redis-server``): to charge the database's
    and Redis's CPU to a run, backends that come and go included as long as they live through it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def cpu_of(name: str) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids_named(name)}


def cpu_used(before: dict[int, float], name: str) -> float:
    """CPU seconds the processes called ``name`` used since ``before`` (new ones counted from zero)."""
    return sum(now - before.get(pid, 0.0) for pid, now in cpu_of(name).items())
