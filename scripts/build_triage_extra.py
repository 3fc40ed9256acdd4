"""Build src/lockbox/routing/classify/data/corpus_extra.jsonl: the blind rounds and the hold-out, as more training for
the topic and urgency model. A separate file so the shipped corpus.jsonl can be edited without conflicts.

Usage: .venv/bin/python scripts/build_triage_extra.py [MORE.jsonl ...]
Reads tests/data/routing/holdout.jsonl and blind_round_*.jsonl, plus any rounds named on the command line.
The probe files are left out: they carry no topic or urgency, and the leave-one-round-out measure in NET_NOTES.md
found them a worse teacher (their emergencies are one-liners, so a short message starts to look like one).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "routing"
CORPUS = ROOT / "src" / "lockbox" / "routing" / "classify" / "data" / "corpus.jsonl"
OUT = CORPUS.with_name("corpus_extra.jsonl")
FIELDS = ("id", "lang", "subject", "body", "urgency", "topic")


def _key(body: str) -> str:
    return " ".join(body.lower().split())


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    shipped = _rows(CORPUS)
    # The test split is what the report scores; a twin of one of its messages in training would flatter it.
    test_bodies = {_key(r["body"]) for r in shipped if r["split"] == "test"}
    seen = {r["id"] for r in shipped}
    sources = [DATA / "holdout.jsonl", *sorted(DATA.glob("blind_round_*.jsonl")), *(Path(a) for a in argv)]
    out: list[dict[str, str]] = []
    dropped = 0
    for path in dict.fromkeys(sources):
        for row in _rows(path):
            if row["id"] in seen or _key(row["body"]) in test_bodies:
                dropped += 1
                continue
            seen.add(row["id"])
            out.append({**{f: str(row[f]) for f in FIELDS}, "split": "extra"})
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"{len(out)} messages from {len(sources)} files to {OUT.relative_to(ROOT)} ({dropped} left out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
