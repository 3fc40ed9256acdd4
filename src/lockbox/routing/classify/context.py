"""Negation, history and hypotheticals around each concept mention: ConText (medspaCy) on a blank spaCy pipeline,
built from our own tokens (words no rule names become "_", so no patient word enters spaCy's string store)."""

from __future__ import annotations

import itertools
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
    # Digits, or a number word no rule names: "hace dos anos" reads as "hace zznum anos"; a temperature below a
    # fever, written with its decimal, is "zznormaltemp" ("is 99.5 a fever" asks, it reports none).
    value = number(tok) if tok else None
    if value is not None:
        if "." in tok and (95 <= value < 100.4 or 35 <= value < 38):
            return "zznormaltemp"
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
        self._cue_exceptions: dict[str, tuple[tuple[str, ...], ...]] = {
            name: tuple(tuple(str(w) for w in phrase) for phrase in phrases)
            for name, phrases in data.get("cue_exceptions", {}).items()
        }
        unknown_cues = set(self._cue_exceptions) - set(self.cues)
        if unknown_cues:
            raise ValueError(f"cue exceptions name unknown cues: {sorted(unknown_cues)}")
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
            for literal in _literals(spec):
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
        negated_from: dict[tuple[int, int, str], int] = {}
        for target, modifier in doc._.context_graph.edges:
            key = (target.start, target.end, target.label_)
            by_span.setdefault(key, set()).add(modifier.category)
            if modifier.category in _NEGATIONS:
                start = modifier.modifier_span[0]
                negated_from[key] = min(start, negated_from.get(key, start))
        found = [set(by_span.get((span.start, span.end, span.label_), set())) for span in spans]
        # A concept that holds a negated one and shares the negation's verb ("tengo fiebre" in "no tengo fiebre",
        # "have a fever" in "do not have a fever") is negated with it: ConText cannot see a trigger it overlaps.
        for k, outer in enumerate(spans):
            for inner in spans:
                key = (inner.start, inner.end, inner.label_)
                start = negated_from.get(key)
                if start is not None and start < outer.start < inner.start and inner.end <= outer.end:
                    found[k] |= by_span[key] & _NEGATIONS
        return found

    def cue_present(self, tokens: Sequence[str], cue: str) -> bool:
        """Whether a cue phrase is in the message, outside every exception phrase that holds its words without
        meaning it ("worried it will happen again" is no recurrence)."""
        phrases = self.cues.get(cue, ())
        excepted = _covered(tokens, self._cue_exceptions.get(cue, ()))
        n = len(tokens)
        for i in range(n):
            for phrase in phrases:
                end = i + len(phrase)
                if (
                    tokens[i] == phrase[0]
                    and tuple(tokens[i:end]) == phrase
                    and not all(k in excepted for k in range(i, end))
                ):
                    return True
        return False


def _covered(tokens: Sequence[str], phrases: Sequence[tuple[str, ...]]) -> frozenset[int]:
    if not phrases:
        return frozenset()
    covered: set[int] = set()
    for i in range(len(tokens)):
        for phrase in phrases:
            if tokens[i] == phrase[0] and tuple(tokens[i : i + len(phrase)]) == phrase:
                covered.update(range(i, i + len(phrase)))
    return frozenset(covered)


def _between_check(fillers: frozenset[str] | None, *, negation: bool = False) -> Callable[[Any, Any, Any], bool]:
    """A trigger reaches a concept only across fillers or other concepts: ConText's sentence scope is too wide for
    run-on patient text, and a wrong suppression is the one error we cannot afford. A trigger inside the concept
    ("not" in "can't breathe") never modifies it; medspaCy's own overlap test misses a trigger strictly inside."""

    def check(target: Any, modifier: Any, _between: Any) -> bool:
        doc = target.doc
        if modifier.start < target.end and target.start < modifier.end:
            # "no tengo" + "tengo fiebre", "do not have" + "have a fever": a negation phrase whose verb the concept
            # shares still negates it, when its negating word stands before the concept
            return negation and modifier.start < target.start and _negating(doc, modifier.start, target.start)
        covered = doc.user_data.get("lex_tokens", frozenset())
        # A negation inside another concept belongs to it: the "not" of "can't pee" is no negation of "my surgery"
        # (only the negating word counts: the "tengo" of "no tengo" may be part of "tengo fiebre").
        if negation and any(
            i in covered and doc[i].text in _INTERNAL_NEGATION for i in range(modifier.start, modifier.end)
        ):
            return False
        if fillers is None:
            return True
        if modifier.start >= target.end:
            lo, hi = target.end, modifier.start
        else:
            lo, hi = modifier.end, target.start
        return all(doc[i].text in fillers or i in covered for i in range(lo, hi))

    return check


def _negating(doc: Any, lo: int, hi: int) -> bool:
    return any(doc[i].text in _INTERNAL_NEGATION for i in range(lo, hi))


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


def _literals(spec: dict[str, Any]) -> list[str]:
    """A rule's literals: its ``phrases`` (each a list of word lists: every choice of one word from each, joined by
    spaces, so "told/said to" x "the/my" x "nurse/doctor" is written once) and then its ``literals``."""
    expanded = [" ".join(words) for phrase in spec.get("phrases", ()) for words in itertools.product(*phrase)]
    return expanded + [str(literal) for literal in spec.get("literals", ())]
