"""Negation, history and hypotheticals around each concept mention: ConText (medspaCy) on a blank spaCy pipeline,
built from our own tokens (words no rule names become "_", so no patient word enters spaCy's string store)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lockbox.routing.classify.lexicon import Lexicon, Mention, load_data, number
from lockbox.routing.classify.text import SENTENCE_END

_PLACEHOLDER = "_"
_NEGATIONS = frozenset({"NEGATED", "NEVER"})
_INTERNAL_NEGATION = frozenset({"not", "no", "never", "unable", "without", "sin", "nunca", "nor", "ni", "cannot"})


@dataclass(frozen=True)
class Category:
    name: str
    suppresses: bool
    yields_to_internal_negation: bool
    revived_by: str | None
    spares_groups: frozenset[str]
    needs_cue: str | None = None  # suppresses only in a message that has this cue


@dataclass(frozen=True)
class Scoped:
    """A mention and the suppressing categories that modify it (a concept saying "not" itself yields none)."""

    mention: Mention
    modifiers: frozenset[str]


def _doc_word(tok: str, vocab: frozenset[str]) -> str:
    if tok in vocab:
        return tok
    # Digits, or a number word no rule names: "hace dos anos" reads as "hace zznum anos".
    value = number(tok) if tok else None
    if value is not None:
        return "zzyear" if len(tok) == 4 and 1900 <= value <= 2099 else "zznum"
    return _PLACEHOLDER


class ContextScoper:
    def __init__(self, lexicon: Lexicon, data: dict[str, Any]) -> None:
        import spacy
        from medspacy.context import ConText, ConTextRule

        self._lexicon = lexicon
        self.categories = {
            name: Category(
                name,
                str(spec.get("suppresses")).lower() == "true",
                str(spec.get("yields_to_internal_negation")).lower() == "true",
                spec.get("revived_by"),
                frozenset(spec.get("spares_groups", ())),
                spec.get("needs_cue"),
            )
            for name, spec in data["categories"].items()
        }
        self.cues: dict[str, tuple[tuple[str, ...], ...]] = {
            name: tuple(tuple(str(w) for w in phrase) for phrase in phrases) for name, phrases in data["cues"].items()
        }
        fillers = {name: frozenset(str(w) for w in words) for name, words in data["fillers"].items()}
        self._nlp = spacy.blank("en")
        self._context = ConText(
            self._nlp,
            name="lockbox_context",
            rules=None,
            span_attrs=None,
            input_span_type="group",
            span_group_name="lex",
            prune_on_modifier_overlap=True,
            prune_on_target_overlap=False,
        )
        vocab: set[str] = {",", SENTENCE_END}
        rules = []
        seen: set[str] = set()
        for spec in data["rules"]:
            category = self.categories[spec["category"]]
            excluded = {c.id for c in lexicon.concepts.values() if c.group in category.spares_groups}
            only = {str(c) for c in spec.get("only", ())}
            unknown = only - set(lexicon.concepts)
            if unknown:
                raise ValueError(f"context rules name unknown concepts: {sorted(unknown)}")
            check = _between_check(
                fillers[spec["fillers"]] if "fillers" in spec else None, negation=category.name in _NEGATIONS
            )
            for literal in spec["literals"]:
                literal = str(literal)
                if literal in seen:
                    # Two rules on one span: medspaCy keeps one of them, silently; refuse instead.
                    raise ValueError(f"context rule {literal!r} is listed twice")
                seen.add(literal)
                vocab.update(literal.split())
                rules.append(
                    ConTextRule(
                        literal,
                        category.name,
                        direction=spec["direction"],
                        max_scope=spec.get("max_scope"),
                        on_modifies=check,
                        allowed_types=only or None,
                        excluded_types=None if only else (excluded or None),
                        terminated_by=set(spec.get("terminated_by", ())),
                    )
                )
        # Every rule is a phrase, so medspaCy's token Matcher would stay empty and spaCy warns (W036) on each call
        # to an empty Matcher; one token pattern that never matches (no token is ever this word) keeps it quiet.
        rules.append(ConTextRule("zzunused", "PSEUDO", pattern=[{"LOWER": "zzunused"}], direction="PSEUDO"))
        for filler_set in fillers.values():
            vocab |= filler_set
        self._vocab = frozenset(vocab)
        self._context.add(rules)
        self._lock = threading.Lock()

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every word a rule or filler names: real words the speller must leave alone."""
        return frozenset(w for w in self._vocab if w.isalpha())

    def scope(self, tokens: Sequence[str], mentions: Sequence[Mention]) -> list[Scoped]:
        """ConText over each sentence that holds a mention (ConText's scope never leaves a sentence, and pairing
        modifiers with targets is quadratic); one Scoped per mention, in order."""
        if not mentions:
            return []
        bounds = _sentences(tokens)
        by_sentence: dict[int, list[int]] = {}
        for k, m in enumerate(mentions):
            by_sentence.setdefault(_sentence_of(bounds, m.start), []).append(k)
        out: list[Scoped | None] = [None] * len(mentions)
        for s, members in by_sentence.items():
            lo, hi = bounds[s]
            found = self._scope_sentence(tokens[lo:hi], [mentions[k] for k in members], lo)
            for k, categories in zip(members, found, strict=True):
                m = mentions[k]
                internal = any(tokens[i] in _INTERNAL_NEGATION for i in range(m.start, m.end))
                kept = frozenset(
                    c
                    for c in categories
                    if self.categories[c].suppresses
                    and not (internal and self.categories[c].yields_to_internal_negation)
                )
                out[k] = Scoped(m, kept)
        return [x for x in out if x is not None]

    def _scope_sentence(self, words: Sequence[str], mentions: Sequence[Mention], offset: int) -> list[set[str]]:
        from spacy.tokens import Doc, Span

        doc = Doc(self._nlp.vocab, words=[_doc_word(w, self._vocab) for w in words], spaces=[True] * len(words))
        spans = [Span(doc, m.start - offset, min(m.end - offset, len(words)), label=m.concept) for m in mentions]
        doc.spans["lex"] = spans
        doc.user_data["lex_tokens"] = frozenset(i for span in spans for i in range(span.start, span.end))
        for token in doc:
            token.is_sent_start = token.i == 0
        with self._lock:
            self._context(doc)
        by_span: dict[tuple[int, int, str], set[str]] = {}
        for target, modifier in doc._.context_graph.edges:
            by_span.setdefault((target.start, target.end, target.label_), set()).add(modifier.category)
        return [by_span.get((span.start, span.end, span.label_), set()) for span in spans]

    def cue_present(self, tokens: Sequence[str], cue: str) -> bool:
        phrases = self.cues.get(cue, ())
        n = len(tokens)
        for i in range(n):
            for phrase in phrases:
                if tokens[i] == phrase[0] and tuple(tokens[i : i + len(phrase)]) == phrase:
                    return True
        return False


def _between_check(fillers: frozenset[str] | None, *, negation: bool = False) -> Callable[[Any, Any, Any], bool]:
    """A trigger reaches a concept only across fillers or other concepts: ConText's sentence scope is too wide for
    run-on patient text, and a wrong suppression is the one error we cannot afford. A trigger inside the concept
    ("not" in "can't breathe") never modifies it; medspaCy's own overlap test misses a trigger strictly inside."""

    def check(target: Any, modifier: Any, _between: Any) -> bool:
        if modifier.start < target.end and target.start < modifier.end:
            return False
        doc = target.doc
        covered = doc.user_data.get("lex_tokens", frozenset())
        # A negation inside another concept belongs to it: the "not" of "can't pee" is no negation of "my surgery".
        if negation and any(i in covered for i in range(modifier.start, modifier.end)):
            return False
        if fillers is None:
            return True
        if modifier.start >= target.end:
            lo, hi = target.end, modifier.start
        else:
            lo, hi = modifier.end, target.start
        return all(doc[i].text in fillers or i in covered for i in range(lo, hi))

    return check


def _sentences(tokens: Sequence[str]) -> list[tuple[int, int]]:
    bounds = []
    start = 0
    for i, tok in enumerate(tokens):
        if tok == SENTENCE_END:
            if i > start:
                bounds.append((start, i))
            start = i + 1
    if start < len(tokens):
        bounds.append((start, len(tokens)))
    return bounds


def _sentence_of(bounds: list[tuple[int, int]], position: int) -> int:
    for s, (lo, hi) in enumerate(bounds):
        if lo <= position < hi:
            return s
    raise ValueError("a mention outside every sentence")


def load(lexicon: Lexicon) -> ContextScoper:
    return ContextScoper(lexicon, load_data("context.yaml"))
