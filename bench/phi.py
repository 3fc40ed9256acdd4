"""PHI report: precision and recall per PHI type on the labelled corpus, train and held-out splits apart.

Usage: .venv/bin/python bench/phi.py [--split train|held_out|blind|all] [--show-errors] [--presidio]
A predicted span counts when it overlaps a labelled span of the same kind (the usual de-identification scoring:
the offsets of "Jones, Pat" vs "Jones, Pat (MRN" matter less than finding it). --presidio also scores
presidio-analyzer's pattern recognisers on the kinds they cover (needs presidio-analyzer importable; it is not a
Lockbox dependency). Goals (issue 4): recall >= 95% for MRN, phone, SSN, email, birth date; >= 90% for names.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lockbox.phi.service import KINDS, Finding, rate, scan

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "phi" / "corpus.jsonl"
NAMES = ROOT / "tests" / "data" / "phi" / "names_on_file.txt"
GOALS = {"mrn": 0.95, "phone": 0.95, "ssn": 0.95, "email": 0.95, "birth_date": 0.95, "name": 0.90}
console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass(frozen=True)
class Message:
    id: int
    split: str
    text: str
    spans: tuple[Finding, ...]


def load_corpus(path: Path = CORPUS) -> list[Message]:
    rows = []
    for line in path.read_text("utf-8").splitlines():
        row = json.loads(line)
        spans = tuple(Finding(s["kind"], s["start"], s["end"]) for s in row["spans"])
        rows.append(Message(row["id"], row["split"], row["text"], spans))
    return rows


def load_names(path: Path = NAMES) -> list[str]:
    return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]


def _overlaps(a: Finding, b: Finding) -> bool:
    return a.kind == b.kind and a.start < b.end and b.start < a.end


@dataclass
class Counts:
    tp: int = 0  # labelled spans found
    fn: int = 0  # labelled spans missed
    correct: int = 0  # predicted spans that hit a label
    fp: int = 0  # predicted spans that hit none
    misses: list[tuple[int, str]] = field(default_factory=list)
    false_alarms: list[tuple[int, str]] = field(default_factory=list)

    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def precision(self) -> float | None:
        return self.correct / (self.correct + self.fp) if self.correct + self.fp else None


@dataclass
class Report:
    per_kind: dict[str, Counts] = field(default_factory=lambda: {k: Counts() for k in KINDS})
    risk_pairs: dict[tuple[str, str], int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def add(self, msg: Message, predicted: Iterable[Finding], *, kinds: Iterable[str] = KINDS) -> None:
        predicted = list(predicted)
        for kind in kinds:
            counts = self.per_kind[kind]
            gold = [s for s in msg.spans if s.kind == kind]
            pred = [p for p in predicted if p.kind == kind]
            for g in gold:
                if any(_overlaps(g, p) for p in pred):
                    counts.tp += 1
                else:
                    counts.fn += 1
                    counts.misses.append((msg.id, msg.text[g.start:g.end]))
            for p in pred:
                if any(_overlaps(p, g) for g in gold):
                    counts.correct += 1
                else:
                    counts.fp += 1
                    counts.false_alarms.append((msg.id, msg.text[p.start:p.end]))
        pair = (rate(msg.spans), rate(predicted))
        self.risk_pairs[pair] = self.risk_pairs.get(pair, 0) + 1


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def evaluate(messages: list[Message], detector: Callable[[str], Iterable[Finding]],
             kinds: Iterable[str] = KINDS) -> Report:
    report = Report()
    kinds = tuple(kinds)
    for msg in messages:
        t0 = time.perf_counter()
        predicted = list(detector(msg.text))
        report.seconds.append(time.perf_counter() - t0)
        report.add(msg, predicted, kinds=kinds)
    return report


def print_report(title: str, report: Report, kinds: tuple[str, ...] = KINDS, *, show_errors: bool = False) -> bool:
    table = Table(title=title)
    for col in ("kind", "labelled", "found", "missed", "false alarms", "precision", "recall", "goal"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    met = True
    for kind in kinds:
        c = report.per_kind[kind]
        goal = GOALS.get(kind)
        recall = c.recall()
        ok = goal is None or recall is None or recall >= goal
        met &= ok
        goal_cell = "" if goal is None else (f"≥{100 * goal:.0f}% " + ("[green]met[/]" if ok else "[red]missed[/]"))
        table.add_row(kind, str(c.tp + c.fn), str(c.tp), str(c.fn), str(c.fp), _pct(c.precision()), _pct(recall),
                      goal_cell)
    console.print(table)
    pairs = report.risk_pairs
    total = sum(pairs.values())
    leaks = sum(n for (gold, pred), n in pairs.items() if gold == "high" and pred != "high")
    over = sum(n for (gold, pred), n in pairs.items() if gold != "high" and pred == "high")
    agree = sum(n for (gold, pred), n in pairs.items() if gold == pred)
    if report.seconds and set(kinds) == set(KINDS):  # the risk rule needs every kind
        median = statistics.median(report.seconds) * 1000
        worst = max(report.seconds) * 1000
        console.print(f"risk: {agree}/{total} messages rated as their labels; high-risk rated lower (would leave in "
                      f"adaptive mode): {leaks}; rated high needlessly: {over}. scan: median {median:.2f} ms, "
                      f"max {worst:.2f} ms per message")
    if show_errors:
        for kind in kinds:
            c = report.per_kind[kind]
            for msg_id, words in c.misses:
                console.print(f"  [red]missed[/] {kind} #{msg_id}: {words!r}")
            for msg_id, words in c.false_alarms:
                console.print(f"  [yellow]false alarm[/] {kind} #{msg_id}: {words!r}")
    return met


def presidio_detector() -> tuple[Callable[[str], list[Finding]], tuple[str, ...]]:
    """presidio-analyzer's predefined pattern recognisers, no NLP engine. Its EmailRecognizer makes tldextract
    try to fetch the public suffix list (it falls back to a bundled copy when offline, after a logged error)."""
    from presidio_analyzer.predefined_recognizers import (
        DateRecognizer,
        EmailRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    recognisers = [(EmailRecognizer(), "EMAIL_ADDRESS", "email"), (PhoneRecognizer(), "PHONE_NUMBER", "phone"),
                   (UsSsnRecognizer(), "US_SSN", "ssn"), (DateRecognizer(), "DATE_TIME", "birth_date")]

    def detect(text: str) -> list[Finding]:
        found = []
        for recogniser, entity, kind in recognisers:
            for r in recogniser.analyze(text, [entity], None):
                if r.score >= 0.3:
                    found.append(Finding(kind, r.start, r.end))
        return found

    return detect, ("email", "phone", "ssn", "birth_date")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--split", choices=["train", "held_out", "blind", "all"],
                        help="default: each split apart (blind: written after tuning; see blind.src.txt)")
    parser.add_argument("--show-errors", action="store_true", help="print missed and false spans (corpus text)")
    parser.add_argument("--presidio", action="store_true", help="also score presidio-analyzer's pattern recognisers")
    args = parser.parse_args()

    messages = load_corpus()
    names = load_names()
    splits = [args.split] if args.split else ["train", "held_out", "blind"]
    t0 = time.perf_counter()
    scan("warm up: lexicons and patterns compile on first use", names_on_file=names)
    console.print(f"first scan (compiles lexicons): {1000 * (time.perf_counter() - t0):.0f} ms; "
                  f"{len(messages)} messages, {len(names)} names on file")
    met = True
    for split in splits:
        subset = [m for m in messages if split == "all" or m.split == split]
        report = evaluate(subset, lambda text: scan(text, names_on_file=names).findings)
        met &= print_report(f"Lockbox PHI scanner — {split} ({len(subset)} messages)", report,
                            show_errors=args.show_errors)
        if args.presidio:
            t1 = time.perf_counter()
            detect, kinds = presidio_detector()
            console.print(f"presidio recognisers loaded in {1000 * (time.perf_counter() - t1):.0f} ms")
            print_report(f"presidio-analyzer pattern recognisers — {split}", evaluate(subset, detect, kinds),
                         kinds, show_errors=args.show_errors)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
