"""The urgency model as an emergency safety net: trained on the blind rounds too (never the test split), it raises
what the lexicon has no entry for, and keeps out of what ConText ruled out."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from lockbox.routing.classify import classify, emergency_check
from lockbox.routing.classify.engine import MODEL_EMERGENCY_THRESHOLD, engine
from lockbox.routing.classify.model import load_corpus

EXTRA = load_corpus(name="corpus_extra.jsonl")
BY_ID = {r.id: r for r in EXTRA}
# Blind-round emergencies the lexicon missed when they were written, which the model rates an emergency from their
# words alone (a leg clot after a knee replacement, a toddler and a grandparent's pill box, and two from round 15).
RAISED = ["blind13-en-002", "blind11-en-073", "blind15-en-032", "blind15-es-020"]


def _key(body: str) -> str:
    return " ".join(body.lower().split())


def test_the_extra_training_file_is_well_formed_and_keeps_the_test_split_out() -> None:
    text = resources.files("lockbox.routing.classify").joinpath("data/corpus_extra.jsonl").read_text(encoding="utf-8")
    for line in text.splitlines():
        assert set(json.loads(line)) == {"id", "lang", "subject", "body", "urgency", "topic", "split"}
    shipped = load_corpus()
    assert {r.split for r in EXTRA} == {"extra"}
    assert len(BY_ID) == len(EXTRA) and not BY_ID.keys() & {r.id for r in shipped}
    test_bodies = {_key(r.body) for r in shipped if r.split == "test"}
    assert not [r.id for r in EXTRA if _key(r.body) in test_bodies]


@pytest.mark.parametrize("ident", RAISED)
def test_the_model_raises_a_blind_emergency_from_its_words_alone(ident: str) -> None:
    record = BY_ID[ident]
    analysis = engine().analyse(record.subject, record.body)
    model = engine().model
    assert model is not None
    # The words without the lexicon's findings: what the model sees when the lexicon has no entry for a message.
    assert model.urgency_emergency_probability(analysis.plain_text()) >= MODEL_EMERGENCY_THRESHOLD
    assert classify(record.subject, record.body).urgency == "emergency"
    assert emergency_check(f"{record.subject}\n{record.body}") is not None


@pytest.mark.parametrize(
    "body",
    [
        "i need to reschedule my appointment on tuesday",
        "can i get a refill of my lisinopril please",
        "necesito una copia de mis resultados de laboratorio",
    ],
)
def test_the_model_leaves_an_ordinary_message_alone(body: str) -> None:
    model = engine().model
    assert model is not None
    assert model.urgency_emergency_probability(engine().analyse("", body).model_text()) < MODEL_EMERGENCY_THRESHOLD
    assert classify("", body).urgency != "emergency" and emergency_check(body) is None


def test_a_model_raise_never_overrides_context(monkeypatch: pytest.MonkeyPatch) -> None:
    # A net that raises everything: what ConText ruled out stays ruled out; anything else is raised.
    from lockbox.routing.classify import engine as engine_module

    monkeypatch.setattr(engine_module, "MODEL_EMERGENCY_THRESHOLD", 0.0)
    ruled_out = "denies chest pain, denies shortness of breath, denies passing out, denies slurred speech"
    assert engine().analyse("", ruled_out).suppressed
    assert classify("", ruled_out).urgency != "emergency" and emergency_check(ruled_out) is None
    assert classify("", "i need to reschedule my appointment on tuesday").urgency == "emergency"


def test_the_fast_emergency_share_matches_scikit_learn() -> None:
    model = engine().model
    assert model is not None
    column = list(model.urgency.classes_).index("emergency")
    for record in EXTRA[::37]:
        text = engine().analyse(record.subject, record.body).model_text()
        expected = model.urgency.predict_proba(model.features.transform([text]))[0][column]
        assert model.urgency_emergency_probability(text) == pytest.approx(float(np.float64(expected)), abs=1e-9)
