"""Routing's background work, registered with the job runner: escalation timers and the duty sweep."""

from __future__ import annotations

from lockbox.jobs import service as jobs
from lockbox.routing import escalation
from lockbox.routing.service import DUTY_SWEEP, run_duty_sweep, run_escalation

jobs.register(escalation.ESCALATE, run_escalation)
jobs.register(DUTY_SWEEP, run_duty_sweep)
