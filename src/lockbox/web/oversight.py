"""The compliance view (audit trail, alerts, chain verification) and the analytics charts with CSV export."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from lockbox.access.actor import Actor
from lockbox.audit import service as audit
from lockbox.audit.schemas import VerifyReportOut
from lockbox.errors import NotFound
from lockbox.identity.models import User
from lockbox.web import analytics, charts
from lockbox.web.common import (
    base_context,
    form_text,
    page_id,
    page_router,
    read_form,
    redirect,
)
from lockbox.web.render import duration, render
from lockbox.web.security import (
    CSRF_FIELD,
    as_user,
    as_user_posting,
)

router = page_router()


# -- compliance ------------------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value[:40])
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _compliance_view(session: Session, *, actor: Actor, username: str, action: str, since: datetime | None,
                     until: datetime | None, before: int | None) -> dict[str, Any]:
    actor_id = None
    unknown_user = False
    if username:
        actor_id = session.scalar(select(User.id).where(User.username == username))
        unknown_user = actor_id is None
    rows = [] if unknown_user else audit.search_log(session, actor=actor, actor_id=actor_id, action=action or None,
                                                    since=since, until=until, before_seq=before, limit=100)
    alerts = audit.list_alerts(session, actor=actor, limit=50)
    ids = {r.actor_id for r in rows if r.actor_id} | {a.actor_id for a in alerts if a.actor_id}
    names = {k: v for k, v in session.execute(select(User.id, User.username).where(User.id.in_(ids)))} if ids else {}
    return {"rows": rows, "alerts": alerts, "names": names, "unknown_user": unknown_user}


@router.get("/compliance")
async def compliance(request: Request, user: str = "", action: str = "", since: str = "", until: str = "",
                     before: int | None = None) -> Response:
    user, action = user.strip()[:64], action.strip()[:64]
    actor, view = await as_user(request, _compliance_view, username=user, action=action, since=_parse_time(since),
                                until=_parse_time(until), before=before if before and before > 0 else None)
    query = {"user": user, "action": action, "since": since[:40], "until": until[:40]}
    return render("compliance.html", base_context(request, actor, page="compliance", title="Compliance", q=query,
                                                  **view))


@router.post("/compliance/alerts/{alert_id}/acknowledge")
async def acknowledge(request: Request, alert_id: str) -> Response:
    form = await read_form(request)
    await as_user_posting(request, form_text(form, CSRF_FIELD, 200), audit.acknowledge_alert,
                          alert_id=page_id(alert_id))
    return redirect("/compliance#alerts")


@router.get("/compliance/verify")
async def verify(request: Request) -> Response:
    actor, report = await as_user(request, audit.verify_log)
    return render("verify.html", base_context(request, actor, page="verify", title="Audit chain",
                                              report=VerifyReportOut.of(report)))


# -- analytics -------------------------------------------------------------------------------------


def _charts(rep: analytics.Report) -> dict[str, Markup]:
    labels = [d.strftime("%m-%d") for d in rep.volume.days]
    series = [(name, [rep.volume.counts.get((pid, d), 0) for d in rep.volume.days])
              for pid, name in rep.volume.providers]
    volume = charts.stacked_columns("chart-volume", "Messages sent per provider per day", labels, series,
                                    desc=f"{sum(rep.volume.counts.values())} messages by {len(series)} providers")
    answered = [s for s in rep.responses if s.answered]  # the table below also lists who is still waiting
    longest = max([s.p90_s or 0 for s in answered] + [0])
    scale, unit = (1, " s") if longest < 120 else (60, " min") if longest < 2 * 3600 else (3600, " h")
    rows = [(f"{s.pool_name} · {s.priority}", (s.median_s or 0) / scale,
             f"median {duration(s.median_s)}, n={s.answered}") for s in answered]
    response = charts.horizontal_bars("chart-response", "Median time to first staff reply, per pool and priority",
                                      rows, markers=[(s.p90_s or 0) / scale for s in answered], unit=unit,
                                      desc="Bars: the median wait; tick: the 90th percentile")
    judged = [s for s in rep.sla if s.share is not None]
    sla = charts.horizontal_bars("chart-sla", "Share of routed threads answered within their SLA, per pool and "
                                 "priority", [(f"{s.pool_name} · {s.priority}", s.share or 0,
                                               f"{s.share:.0f}% ({s.met} of {s.decided})") for s in judged],
                                 unit="%", top_value=100,
                                 desc="Bars: the share of threads whose first staff reply came by the due time")
    total_topics = sum(n for _, n in rep.topics) or 1
    topic = charts.horizontal_bars("chart-topic", "Share of routed messages by topic",
                                   [(t, 100 * n / total_topics, f"{100 * n / total_topics:.0f}% ({n})")
                                    for t, n in rep.topics], unit="%", width=440)
    total_loc = sum(n for _, n in rep.locations) or 1
    location = charts.horizontal_bars("chart-location", "Share of new patient threads by location",
                                      [(loc, 100 * n / total_loc, f"{100 * n / total_loc:.0f}% ({n})")
                                       for loc, n in rep.locations], unit="%", width=440)
    return {"volume": volume, "response": response, "sla": sla, "topic": topic, "location": location}


@router.get("/analytics")
async def analytics_page(request: Request, days: int = analytics.DEFAULT_DAYS) -> Response:
    actor, rep = await as_user(request, analytics.report, days=days)
    return render("analytics.html", base_context(request, actor, page="analytics", title="Analytics", rep=rep,
                                                 charts=_charts(rep), days=(rep.window.until - rep.window.since).days,
                                                 buckets=analytics.BUCKETS))


@router.get("/analytics/{report_name}.csv")
async def analytics_csv(request: Request, report_name: str, days: int = analytics.DEFAULT_DAYS) -> Response:
    if report_name not in analytics.REPORTS:
        raise NotFound()
    _, (filename, text) = await as_user(request, analytics.export_csv, write=True, report_name=report_name,
                                        days=days)
    return Response(text.encode(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
