"""The ``lockbox`` command: serve, demo, worker, and each domain's operations (directory, audit, keys)."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Lockbox: secure messaging for healthcare.", no_args_is_help=True)

# Domains contribute their own sub-commands from ``<domain>/cli.py`` (a Typer app named ``cli``).
for _name in ("directory", "audit", "crypto"):
    try:
        _module = importlib.import_module(f"lockbox.{_name}.cli")
    except ModuleNotFoundError as exc:
        if exc.name != f"lockbox.{_name}.cli":
            raise
        continue
    app.add_typer(_module.cli, name=getattr(_module, "COMMAND", _name))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    tls_cert: str | None = typer.Option(None, help="PEM certificate: serve HTTPS directly."),
    tls_key: str | None = typer.Option(None, help="PEM private key for --tls-cert."),
) -> None:
    """Serve the API, web UI and in-process workers; creates or migrates the database on start."""
    import uvicorn

    from lockbox import logs
    from lockbox.app import create_app

    logs.configure()
    uvicorn.run(
        create_app(),
        host=host,
        port=port,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        log_config=None,
        access_log=False,  # access logs carry URLs and addresses; the audit log is the record
    )


@app.command()
def worker(
    count: int = typer.Option(1, help="Worker threads in this process."),
    poll: float = typer.Option(1.0, help="Seconds between polls when idle."),
) -> None:
    """Run background jobs (notifications, escalation timers, EHR filing) until interrupted."""
    import signal
    import threading

    from lockbox import logs
    from lockbox.app import build_database
    from lockbox.config import load_settings
    from lockbox.jobs.worker import Worker

    logs.configure()
    db = build_database(load_settings())
    db.migrate()
    from lockbox.routing.classify import warm_up

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
