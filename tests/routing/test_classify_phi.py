"""Explanations and signals name lexicon concepts only: nothing a patient wrote can leak through them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lockbox.routing.classify import TOPICS, URGENCIES, classify, emergency_check
from lockbox.routing.classify.engine import engine, words_of
from lockbox.routing.classify.model import Record, load_corpus

RECORDS = load_corpus() + load_corpus(
    (Path(__file__).parents[1] / "data" / "routing" / "holdout.jsonl").read_text(encoding="utf-8")
)


def _signal_pattern() -> re.Pattern[str]:
    lexicon = engine().lexicon
    ids = "|".join(sorted([*lexicon.concepts, *(c.id for c in lexicon.combos)], key=len, reverse=True))
    categories = "|".join(c.lower() for c in engine().context.categories)
    return re.compile(
        rf"^(lex:({ids})|ctx:({categories}):({ids})|model:urgency:({'|'.join(URGENCIES)})"
        rf"|model:topic:({'|'.join(TOPICS)}))$"
    )


def test_every_explanation_is_one_line_of_lexicon_words_and_every_signal_an_id() -> None:
    allowed = engine().explanation_vocabulary()
    signal = _signal_pattern()
    for record in RECORDS:
        for triage in filter(None, [classify(record.subject, record.body), emergency_check(record.body)]):
            assert "\n" not in triage.explanation and triage.explanation.endswith(".")
            stray = set(words_of(triage.explanation)) - allowed
            assert not stray, (record.id, triage.explanation, stray)
            assert all(signal.match(s) for s in triage.signals), (record.id, triage.signals)


def test_no_word_of_the_message_outside_the_lexicon_names_reaches_the_explanation() -> None:
    allowed = engine().explanation_vocabulary()
    for record in RECORDS:
        triage = classify(record.subject, record.body)
        said = set(words_of(triage.explanation))
        private = set(words_of(f"{record.subject} {record.body}")) - allowed
        assert not (said & private), (record.id, said & private)


@pytest.mark.parametrize(
    "body",
    [
        "This is Zebulon Quarterfield, DOB 04/02/1980, MRN 4471123. I have crushing chest pain.",
        "Maria Guadalupe Etxeberria aqui, vivo en 123 Calle Olmo, me duele el pecho y no puedo respirar",
        "call me at 555-867-5309, my daughter Xiomara swallowed Abuela Reyna's pills",
        "My husband Thaddeus has seizures since 2009, need Keppra refilled, email thad@example.com",
    ],
)
def test_identifiers_in_the_message_never_reach_explanation_or_signals(body: str) -> None:
    for triage in filter(None, [classify("Re: Zebulon", body), emergency_check(body)]):
        out = (triage.explanation + " " + " ".join(triage.signals)).lower()
        for secret in ("zebulon", "quarterfield", "4471123", "1980", "etxeberria", "olmo", "867", "5309",
                       "xiomara", "reyna", "thaddeus", "2009", "thad", "example"):
            assert secret not in out, (secret, out)


def test_an_emergency_explanation_names_the_concepts() -> None:
    triage = classify("", "my grandpa's smile is crooked all of a sudden")
    assert triage.explanation == "Emergency: possible stroke signs (face drooping)."
    assert triage.signals[0] == "lex:face_drooping"


def test_a_routine_explanation_says_what_was_ruled_out() -> None:
    triage = classify("", "denies any shortness of breath, needs a refill of lisinopril")
    assert triage.urgency != "emergency"
    assert "ctx:negated:trouble_breathing" in triage.signals
    assert "trouble breathing mentioned as negated" in triage.explanation


def test_record_type() -> None:
    assert isinstance(RECORDS[0], Record)
