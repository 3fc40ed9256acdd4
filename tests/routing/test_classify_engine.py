"""The parts of the triage engine: normalisation, speller, lexicon compiler, ConText rules, model, threads."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from lockbox.routing.classify import LANGUAGES, TOPICS, URGENCIES, Triage, classify
from lockbox.routing.classify.context import ContextScoper, _literals
from lockbox.routing.classify.engine import engine
from lockbox.routing.classify.lexicon import Lexicon, LexiconError, load_data
from lockbox.routing.classify.model import load_corpus
from lockbox.routing.classify.text import raw_tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("I can't breathe", ["i", "can", "not", "breathe"]),
        ("he won't wake up", ["he", "will", "not", "wake", "up"]),
        ("cant breathe rn", ["can", "not", "breathe", "right", "now"]),
        ("ME DUELE EL PECHO", ["me", "duele", "el", "pecho"]),
        ("tiene la cara caída", ["tiene", "la", "cara", "caida"]),
        ("my grandpa's smile", ["my", "grandpa", "smile"]),
        ("painnnnn!!!", ["painn", "."]),
        ("fever 102.5F w/o relief", ["fever", "102.5", "f", "without", "relief"]),
    ],
)
def test_normalisation(text: str, tokens: list[str]) -> None:
    assert raw_tokens(text) == tokens


@pytest.mark.parametrize(
    ("word", "corrected"),
    [
        ("brething", ("breathing",)),
        ("sezure", ("seizure",)),
        ("unconsious", ("unconscious",)),
        ("chestpain", ("chest", "pain")),
        ("cooking", ("cooking",)),  # a real word, one edit from "choking", is left alone
        ("anos", ("anos",)),  # Spanish "años" without its tilde must not become "manos"
        ("zebulon", ("zebulon",)),
    ],
)
def test_speller(word: str, corrected: tuple[str, ...]) -> None:
    assert engine().speller.correct(word) == corrected


def test_classify_answers_in_the_contract_vocabulary() -> None:
    for record in load_corpus()[::9]:
        triage = classify(record.subject, record.body)
        assert triage.urgency in URGENCIES and triage.topic in TOPICS and triage.language in LANGUAGES
        assert isinstance(triage.signals, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        triage.urgency = "routine"  # type: ignore[misc]


def test_empty_and_odd_input_is_classified_not_raised() -> None:
    for subject, body in [("", ""), ("", "   "), ("!!!", "???"), ("", "😀 🙏"), ("", "a" * 20000), ("", "0" * 500)]:
        assert isinstance(classify(subject, body), Triage)


def test_the_fast_model_path_matches_scikit_learn() -> None:
    model = engine().model
    assert model is not None
    for record in load_corpus()[::25]:
        analysis = engine().analyse(record.subject, record.body)
        text, plain = analysis.model_text(), analysis.plain_text()
        fast = model.predict(text, plain)
        x = model.features.transform([text])
        urgency = model.urgency.predict_proba(x)[0]
        for cls, p in zip(model.urgency.classes_, urgency, strict=True):
            assert fast.urgency_probabilities[str(cls)] == pytest.approx(p, abs=1e-9)
        assert fast.topic == model.topic.classes_[int(np.argmax(model.topic.predict_proba(x)[0]))]
        net = model.net.predict_proba(model.plain.transform([plain]))[0][list(model.net.classes_).index(True)]
        assert fast.emergency_probability == pytest.approx(net, abs=1e-9)


def test_concurrent_callers_get_the_answers_a_single_caller_gets() -> None:
    records = load_corpus()[::4]
    expected = [classify(r.subject, r.body) for r in records]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda r: classify(r.subject, r.body), records))
    assert got == expected


def _lexicon_data(**changes: Any) -> dict[str, Any]:
    data = {
        "compounds": [],
        "classes": {"PAIN": ["pain", "hurts"]},
        "groups": {"heart": "possible heart attack signs"},
        "concepts": [{"id": "chest_pain", "name": "chest pain", "group": "heart", "level": "emergency",
                      "patterns": ["chest ~2 $PAIN"]}],
        "combos": [],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": {}}, "unknown class"),
        ({"groups": {}}, "unknown group"),
        ({"concepts": [{"id": "x", "name": "x", "group": "heart", "level": "severe", "patterns": ["x"]}]}, "level"),
        ({"concepts": [{"id": "x", "name": "x", "group": "heart", "level": "urgent", "patterns": ["~2 x"]}]},
         "starts and ends"),
        ({"concepts": [{"id": "x", "name": "x", "group": "heart", "level": "urgent", "patterns": ["ch* x"]}]},
         "prefixes"),
        ({"combos": [{"id": "c", "name": "c", "group": "heart", "level": "emergency", "all": ["nope"]}]},
         "unknown concepts"),
    ],
)
def test_a_malformed_lexicon_is_refused_at_load(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(LexiconError, match=message):
        Lexicon(_lexicon_data(**changes))


def test_the_shipped_lexicon_matches_with_gaps_prefixes_and_numbers() -> None:
    lexicon = Lexicon(
        _lexicon_data(
            concepts=[
                {"id": "chest_pain", "name": "chest pain", "group": "heart", "level": "emergency",
                 "patterns": ["chest ~2 $PAIN", "tight* ~3:FILL chest"]},
                {"id": "fever", "name": "fever", "group": "heart", "level": "urgent",
                 "patterns": ["fever ~2 N:102-110"]},
            ],
            classes={"PAIN": ["pain", "hurts"], "FILL": ["in", "my"]},
        )
    )
    found = lambda text: [m.concept for m in lexicon.match(text.split())]  # noqa: E731
    assert found("my chest really hurts") == ["chest_pain"]
    assert found("tightening in my chest") == ["chest_pain"]
    assert found("tightening at work and my chest") == []
    assert found("chest . pain") == []  # never across a sentence
    assert found("chest no pain") == []  # never across a negation
    assert found("fever of 103") == ["fever"] and found("fever of 101") == []


def test_a_context_literal_listed_twice_is_refused() -> None:
    data = load_data("context.yaml")
    data["rules"].append({"category": "NEGATED", "direction": "FORWARD", "fillers": "NO", "literals": ["denies"]})
    with pytest.raises(ValueError, match="listed twice"):
        ContextScoper(engine().lexicon, data)


def test_context_phrases_multiply_out_and_are_held_to_the_same_duplicate_check() -> None:
    spec = {"phrases": [[["told", "said to"], ["the", "my"], ["nurse"]]], "literals": ["per the chart"]}
    assert _literals(spec) == ["told the nurse", "told my nurse", "said to the nurse", "said to my nurse",
                               "per the chart"]
    data = load_data("context.yaml")
    data["rules"].append({"category": "NEGATED", "direction": "FORWARD", "fillers": "NO",
                          "phrases": [[["told"], ["the"], ["nurse"]]]})  # already a PSEUDO phrase
    with pytest.raises(ValueError, match="listed twice"):
        ContextScoper(engine().lexicon, data)


def test_a_cue_exception_for_an_unknown_cue_is_refused() -> None:
    data = load_data("context.yaml")
    data["cue_exceptions"] = {"no_such_cue": [["happen", "again"]]}
    with pytest.raises(ValueError, match="unknown cues"):
        ContextScoper(engine().lexicon, data)


@pytest.mark.parametrize(
    ("text", "present"),
    [
        ("should i be worried it will happen again", False),  # a worry about later is no recurrence
        ("ahorita estoy bien", False),
        ("my cholesterol came back on the portal", False),
        ("it is happening again", True),
        ("the pain came back", True),
        ("ahorita no respira", True),
    ],
)
def test_a_recurrence_cue_inside_an_exception_phrase_does_not_count(text: str, present: bool) -> None:
    assert engine().context.cue_present(text.split(), "recurrence") is present


@pytest.mark.parametrize(
    ("text", "concept"),
    [
        # each was once an alternative inside a multi-word list ("winded|breathless|out of breath|...") and so
        # never matched alone
        ("i get winded", "breath_pain"),
        ("i feel short winded", "breath_pain"),
        ("shaking chills since last night", "fever_stated"),
        ("she is postpartum", "postpartum"),
        ("has not peed since yesterday", "anuria"),
        ("talking to people who are not there", "paranoia"),
        ("the redness is spreading by the hour", "spreading_fast"),
        ("it hurts like crazy", "limb_numb_or_still"),
        ("shaking on its own", "muscle_jerking"),
    ],
)
def test_a_word_that_was_one_alternative_of_a_phrase_list_matches_alone(text: str, concept: str) -> None:
    lexicon = engine().lexicon
    assert concept in {m.concept for m in lexicon.match(engine().tokens(text))}


@pytest.mark.parametrize(
    "text",
    [
        "no tengo fiebre pero estoy en quimio",
        "I don't have a fever, I'm on chemo",
        "no he tenido fiebre, tengo trasplante",
    ],
)
def test_a_negation_that_shares_its_verb_with_the_concept_negates_it(text: str) -> None:
    # "no tengo" overlaps "tengo fiebre": the lexicon must not read a fever during chemotherapy or after a transplant
    # (the model's net, which cannot read negation, is a separate matter)
    analysis = engine().analyse("", text)
    assert "fever_stated" not in analysis.affirmed and "fever" not in analysis.affirmed, analysis.affirmed
    assert not analysis.emergencies, analysis.emergencies
