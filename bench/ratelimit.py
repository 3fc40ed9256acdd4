"""CPU of one send's rate-limit check in memory: ``limits``' MemoryStorage against Lockbox's counters, in one
process, as the number of live counters grows (every address and account that sent in the last windows).

Usage: .venv/bin/python bench/ratelimit.py [--checks 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from limits.aio.storage import MemoryStorage  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from lockbox.config import Settings  # noqa: E402
from lockbox.ratelimit import RateLimits  # noqa: E402

LIVE = (100, 1_000, 6_000, 20_000)  # senders seen lately (each counts an address and an account)


async def per_check_us(limits: RateLimits, senders: int, checks: int) -> float:
    for n in range(senders):
        await limits.check("send", account=f"u{n}", address=f"10.0.{n // 250}.{n % 250}")
    await asyncio.sleep(0)  # let limits' sweep task of the warm-up run
    started = time.process_time()
    for n in range(checks):
        await limits.check("send", account=f"u{n % senders}", address=f"10.0.{n % senders // 250}.{n % 250}")
        await asyncio.sleep(0)  # the loop turns between requests, and limits' scheduled sweep runs
    return (time.process_time() - started) / checks * 1e6


async def main(checks: int) -> None:
    settings = Settings(env="test", rate_send_account="100000/second", rate_send_address="100000/second")
    table = Table(title="One send's rate-limit check (address + account), CPU µs, in memory")
    for col in ("live senders", "limits' MemoryStorage", "Lockbox counters", "ratio"):
        table.add_column(col, justify="right")
    for senders in LIVE:
        library = await per_check_us(RateLimits(settings, storage=MemoryStorage()), senders, checks)
        ours = await per_check_us(RateLimits(settings), senders, checks)
        table.add_row(f"{senders:,}", f"{library:,.1f}", f"{ours:,.1f}", f"{library / ours:,.1f}x")
    Console().print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    asyncio.run(main(parser.parse_args().checks))
