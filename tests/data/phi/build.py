"""Builds corpus.jsonl from corpus.src.txt: strips the [[kind|text]] marks and computes the spans' offsets.

Run from anywhere: python tests/data/phi/build.py. Every third message of each ten (ids ending 2, 5, 8) is the
held-out split, measured only at the end (about 30%).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).parent
KINDS = {"name", "mrn", "birth_date", "phone", "address", "ssn", "email", "diagnosis", "medication", "icd10"}
MARK = re.compile(r"\[\[(\w+)\|(.+?)\]\]")
HELD_OUT = {2, 5, 8}


def parse(line: str) -> tuple[str, list[dict[str, object]]]:
    line = line.replace("\\n", "\n")
    text, spans, pos = [], [], 0
    length = 0
    for m in MARK.finditer(line):
        kind, inner = m.group(1), m.group(2)
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        before = line[pos:m.start()]
        text.append(before)
        length += len(before)
        spans.append({"kind": kind, "start": length, "end": length + len(inner)})
        text.append(inner)
        length += len(inner)
        pos = m.end()
    text.append(line[pos:])
    out = "".join(text)
    if "[[" in out or "]]" in out:
        raise ValueError(f"unbalanced mark in {line!r}")
    return out, spans


def main() -> None:
    rows = []
    for raw in (HERE / "corpus.src.txt").read_text("utf-8").splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        text, spans = parse(raw)
        n = len(rows)
        rows.append({"id": n, "split": "held_out" if n % 10 in HELD_OUT else "train", "text": text, "spans": spans})
    # The blind set: written after tuning, never tuned against (see blind.src.txt).
    for raw in (HERE / "blind.src.txt").read_text("utf-8").splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        text, spans = parse(raw)
        rows.append({"id": len(rows), "split": "blind", "text": text, "spans": spans})
    with (HERE / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} messages, {sum(r['split'] == 'held_out' for r in rows)} held out, "
          f"{sum(r['split'] == 'blind' for r in rows)} blind, "
          f"{sum(len(r['spans']) for r in rows)} spans")


if __name__ == "__main__":
    main()
