"""Topic files in data/lexicon.d extend the shipped lexicon: new words for known concepts, new concepts, class
members; each file passes the same checks at load."""

from __future__ import annotations

from importlib import resources

import pytest

from lockbox.routing.classify.lexicon import Lexicon, LexiconError, load, load_data, merge


def test_a_topic_file_adds_patterns_to_a_known_concept_and_new_concepts() -> None:
    base = load_data("lexicon.yaml")
    known = base["concepts"][0]
    extra = {
        "classes": {"CHEST": ["qqchestword"]},
        "concepts": [
            {"id": known["id"], "patterns": ["qqsaid qqonce"]},
            {"id": "qq_new", "name": "a new concept", "group": known["group"], "level": "component",
             "patterns": ["qqnew $CHEST"]},
        ],
    }
    before = Lexicon(base)
    after = Lexicon(merge(base, extra))
    assert len(after.patterns) == len(before.patterns) + 2
    assert "qq_new" in after.concepts and "qqchestword" in after.classes["CHEST"]
    assert after.concepts[known["id"]] == before.concepts[known["id"]]  # name, group and level stay the base's
    assert len(Lexicon(merge(merge(base, extra), extra)).patterns) == len(after.patterns)  # idempotent


def test_a_bad_topic_file_fails_at_load() -> None:
    base = load_data("lexicon.yaml")
    with pytest.raises(LexiconError):
        Lexicon(merge(base, {"concepts": [{"id": "qq_bad", "name": "x", "group": "no-such-group",
                                           "level": "emergency", "patterns": ["qq"]}]}))


def test_every_shipped_topic_file_is_loaded() -> None:
    folder = resources.files("lockbox.routing.classify").joinpath("data/lexicon.d")
    ids = {str(c["id"]) for item in folder.iterdir() if item.name.endswith(".yaml")
           for c in (load_data(f"lexicon.d/{item.name}").get("concepts") or [])}
    assert ids <= set(load().concepts)
