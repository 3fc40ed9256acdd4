"""Triage classifier report: emergency recall and precision, urgency and topic accuracy, classify() latency.

Usage: .venv/bin/python bench/routing_report.py [--corpus FILE.jsonl] [--split test|train|all] [--show-errors]
Without --corpus: the shipped corpus's test split. With it: any JSONL of the same shape, all of it by default.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lockbox.routing.classify import Triage
from lockbox.routing.classify.engine import Engine
from lockbox.routing.classify.model import Record, load_corpus

console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass
class Scores:
    n: int = 0
    emergencies: int = 0
    caught: int = 0
    false_alarms: int = 0
    urgency_ok: int = 0
    topic_ok: int = 0

    def add(self, record: Record, triage: Triage) -> None:
        self.n += 1
        flagged = triage.urgency == "emergency"
        if record.urgency == "emergency":
            self.emergencies += 1
            self.caught += flagged
        else:
            self.false_alarms += flagged
        self.urgency_ok += triage.urgency == record.urgency
        self.topic_ok += triage.topic == record.topic


def _pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:.1f}%" if den else "n/a"


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="JSONL corpus (default: the one shipped in the package)")
    parser.add_argument("--split", choices=["test", "train", "all"], help="default: test, or all with --corpus")
    parser.add_argument("--passes", type=int, default=5, help="timing passes over the messages")
    parser.add_argument("--show-errors", action="store_true", help="list missed emergencies and false alarms")
    args = parser.parse_args()

    started = time.perf_counter()
    engine = Engine()
    build_s = time.perf_counter() - started
    records = load_corpus(args.corpus.read_text(encoding="utf-8")) if args.corpus else load_corpus()
    split = args.split or ("all" if args.corpus else "test")
    if split != "all":
        records = [r for r in records if r.split == split]
    if not records:
        console.print(f"no messages in split {split!r}")
        return 2

    scores = {"en": Scores(), "es": Scores(), "all": Scores()}
    errors: list[str] = []
    for record in records:
        triage = engine.classify(record.subject, record.body)
        for key in (record.lang, "all"):
            scores.setdefault(key, Scores()).add(record, triage)
        if (record.urgency == "emergency") != (triage.urgency == "emergency"):
            kind = "MISSED" if record.urgency == "emergency" else "false alarm"
            errors.append(f"{kind:11} {record.id}: {record.body[:90]!r} -> {triage.signals}")

    # Latency as a caller sees it: warm engine, one message at a time, the collector out of the way per call.
    classify_s: list[float] = []
    check_s: list[float] = []
    gc.collect()
    for _ in range(args.passes):
        for record in records:
            t0 = time.perf_counter()
            engine.classify(record.subject, record.body)
            t1 = time.perf_counter()
            engine.emergency_check(record.body)
            t2 = time.perf_counter()
            classify_s.append(t1 - t0)
            check_s.append(t2 - t1)

    source = str(args.corpus) if args.corpus else "shipped corpus"
    table = Table(title=f"Triage classifier - {source}, split {split}")
    table.add_column("language")
    for column in ("messages", "emergencies", "recall", "missed", "precision", "false alarms", "urgency acc",
                   "topic acc"):
        table.add_column(column, justify="right")
    for key in ("en", "es", "all"):
        s = scores.get(key)
        if s is None or not s.n:
            continue
        flagged = s.caught + s.false_alarms
        table.add_row(
            {"en": "English", "es": "Spanish", "all": "combined"}.get(key, key),
            str(s.n),
            str(s.emergencies),
            _pct(s.caught, s.emergencies),
            str(s.emergencies - s.caught),
            _pct(s.caught, flagged),
            str(s.false_alarms),
            _pct(s.urgency_ok, s.n),
            _pct(s.topic_ok, s.n),
        )
    console.print(table)

    p50, p99 = _percentiles(classify_s)
    c50, c99 = _percentiles(check_s)
    timing = Table(title=f"Latency over {len(classify_s)} calls (model built in {build_s:.1f} s)")
    for column in ("call", "p50 ms", "p99 ms", "budget"):
        timing.add_column(column, justify="right" if column != "call" else "left")
    timing.add_row("classify()", f"{p50:.2f}", f"{p99:.2f}", "p99 < 5 ms")
    timing.add_row("emergency_check()", f"{c50:.2f}", f"{c99:.2f}", "below classify()")
    console.print(timing)

    if args.show_errors:
        for line in errors:
            console.print(line, markup=False)
    total = scores["all"]
    ok = total.caught == total.emergencies
    console.print("emergency recall 100%" if ok else "[bold red]emergency recall below 100%[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
