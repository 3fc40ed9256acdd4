"""The ``lockbox`` command: serve, demo, worker, and each domain's operations (directory, audit, keys)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Lockbox: secure messaging for healthcare.", no_args_is_help=True)

# Domains contribute their own sub-commands from ``<domain>/cli.py`` (a Typer app named ``cli``).
for _name in ("directory", "audit", "crypto", "retention", "fhir"):
    try:
        _module = importlib.import_module(f"lockbox.{_name}.cli")
    except ModuleNotFoundError as exc:
        if exc.name != f"lockbox.{_name}.cli":
            raise
        continue
    app.add_typer(_module.cli, name=getattr(_module, "COMMAND", _name))

# Operations: `lockbox backup PATH` and `lockbox restore PATH` are top-level (ARCHITECTURE section 5).
from lockbox.backup import cli as _backup_cli  # noqa: E402

app.command("backup")(_backup_cli.backup)
app.command("restore")(_backup_cli.restore)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    tls_cert: str | None = typer.Option(None, help="PEM certificate: serve HTTPS directly."),
    tls_key: str | None = typer.Option(None, help="PEM private key for --tls-cert."),
    proxy_headers: bool = typer.Option(
        False, "--proxy-headers",
        help="Behind a TLS-terminating proxy: trust X-Forwarded-For/-Proto from LOCKBOX_TRUSTED_PROXIES only."),
    trusted_proxies: str | None = typer.Option(
        None, help="Proxy addresses or networks, comma-separated (overrides LOCKBOX_TRUSTED_PROXIES)."),
) -> None:
    """Serve the API, web UI and in-process workers; creates or migrates the database on start.

    With LOCKBOX_ENV=production it refuses to start without TLS or a trusted proxy, with key or data
    files others can read, or on the demo's data (exit 2, one line on stderr).
    """
    import uvicorn

    from lockbox import logs
    from lockbox.app import create_app
    from lockbox.config import load_settings
    from lockbox.system.production import Edge, check_proxies, refusals

    overrides: dict[str, object] = {}
    if proxy_headers:
        overrides["proxy_headers"] = True
    if trusted_proxies is not None:
        overrides["trusted_proxies"] = trusted_proxies
    settings = load_settings(**overrides)
    problem = check_proxies(settings)
    if settings.env == "production":
        problems = refusals(settings, Edge(tls_cert=tls_cert, tls_key=tls_key))
        problem = "; ".join(problems) if problems else None
    if problem:
        typer.echo(f"error: refusing to start: {problem}", err=True)
        raise typer.Exit(2)
    logs.configure()
    application = create_app(settings)
    from lockbox.retention.tasks import arm

    arm(application.state.lockbox.db)  # the periodic retention sweep (no-op if one is queued)
    uvicorn.run(
        application,
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        # Forwarded headers are applied by the app itself, from trusted proxies only (lockbox.app);
        # uvicorn's own default would trust any local process's X-Forwarded-For.
        proxy_headers=False,
        log_config=None,
        access_log=False,  # access logs carry URLs and addresses; the audit log is the record
    )


@app.command()
def worker(
    count: int = typer.Option(1, help="Worker threads in this process."),
    poll: float = typer.Option(1.0, help="Seconds between polls when idle."),
    warm_up_triage: bool = typer.Option(True, "--warm-up/--no-warm-up",
                                        help="Train the triage model before the first job (else on first use)."),
) -> None:
    """Run background jobs (notifications, escalation timers, EHR filing) until interrupted."""
    import signal
    import threading

    from lockbox import logs
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.jobs.worker import Worker

    logs.configure()
    settings = load_settings()
    # With Redis, events from jobs (escalations, assignments) reach the servers' open sockets.
    hub = None
    if settings.redis_url:
        from lockbox.realtime.redis_hub import RedisHub

        hub = RedisHub(settings.redis_url, channel=f"{settings.redis_prefix}:events")
        hub.start_thread()
    db = build_database(settings, hub=hub)
    db.migrate()
    from lockbox.retention.tasks import arm

    arm(db)  # the periodic retention sweep (no-op if one is queued)
    from lockbox.routing.classify import warm_up

    if warm_up_triage:
        warm_up()  # escalation and re-triage jobs classify; train once before the first job
    workers = [Worker(db, poll_s=poll) for _ in range(count)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for w in workers:
        w.start()
    typer.echo(f"lockbox worker: {count} running", err=True)
    stop.wait()
    for w in workers:
        w.stop()
    if hub is not None:
        hub.stop_thread()
    db.close()


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
) -> None:
    """Seed a demo clinic, print its logins (usernames, passwords, TOTP secrets) and serve it."""
    from lockbox.demo import run_demo

    run_demo(host=host, port=port)


def main() -> None:
    """Entry point: configuration mistakes are reported in one line, not as a traceback."""
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        fields = ", ".join("LOCKBOX_" + ".".join(str(p) for p in e["loc"]).upper() for e in exc.errors())
        typer.echo(f"error: invalid configuration: {fields}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
