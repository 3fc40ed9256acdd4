"""The clinical lexicon (data/lexicon.yaml): concepts in patients' words, compiled to token patterns with gaps.
Our own small matcher: spaCy's Matcher needs a pattern per gap length and is far slower on a thousand patterns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from lockbox.routing.classify.text import SENTENCE_END, fold

LEVELS = ("emergency", "urgent", "component", "feature")
# A gap never crosses a sentence, a clause that turns the story ("but"), or a negation: "3 days, no fever" is not
# a fever of 3 days, and ConText cannot see a negation hidden inside a mention.
_BARRIERS = frozenset({SENTENCE_END, "but", "pero", "however", "although", "aunque", "sino"})
_NEGATIONS = frozenset({"no", "not", "never", "without", "sin", "ni", "nunca", "denies", "deny", "denied", "none"})
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5, "seis": 6, "siete": 7,
    "ocho": 8, "nueve": 9, "diez": 10, "once": 11, "doce": 12, "a": 1, "an": 1, "un": 1, "una": 1,
}
_ANY_NUMBER = "NUM"


class LexiconError(ValueError):
    """The shipped lexicon is malformed: a bug caught at load, never at a patient's message."""


def number(tok: str) -> float | None:
    if tok[0].isdigit():
        try:
            return float(tok)
        except ValueError:
            return None
    value = _NUMBER_WORDS.get(tok)
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Element:
    words: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    ranges: tuple[tuple[float, float], ...] = ()
    any_number: bool = False
    optional: bool = False
    gap: int = 0  # > 0: skip up to this many tokens
    gap_words: frozenset[str] | None = None  # a restricted gap: only these words (None: anything but barriers)

    def accepts(self, tok: str) -> bool:
        if tok in self.words:
            return True
        if self.prefixes and tok.startswith(self.prefixes):
            return True
        if self.ranges or self.any_number:
            value = number(tok)
            if value is not None:
                return self.any_number or any(lo <= value <= hi for lo, hi in self.ranges)
        return False


@dataclass(frozen=True)
class Concept:
    id: str
    name: str
    group: str
    level: str


@dataclass(frozen=True)
class Combo:
    id: str
    name: str
    group: str
    level: str
    all: tuple[str, ...]


@dataclass(frozen=True)
class Pattern:
    concept: str
    elements: tuple[Element, ...]


@dataclass(frozen=True)
class Mention:
    concept: str
    start: int
    end: int


class Lexicon:
    def __init__(self, data: dict[str, Any]) -> None:
        self.groups: dict[str, str] = {str(k): str(v) for k, v in data["groups"].items()}
        self.classes: dict[str, frozenset[str]] = {
            name: frozenset(fold(str(w)) for w in words) for name, words in data["classes"].items()
        }
        bad = sorted(w for words in self.classes.values() for w in words if w.endswith("*") and len(w) < 5)
        if bad:
            raise LexiconError(f"prefixes shorter than 4 letters match too much: {bad}")
        self.compounds: dict[tuple[str, ...], str] = {
            tuple(fold(str(w)) for w in parts): "_".join(fold(str(w)) for w in parts) for parts in data["compounds"]
        }
        self.concepts: dict[str, Concept] = {}
        self.patterns: list[Pattern] = []
        for item in data["concepts"]:
            concept = Concept(item["id"], item["name"], item["group"], item["level"])
            self._check(concept.id, concept.group, concept.level)
            self.concepts[concept.id] = concept
            for text in item["patterns"]:
                self.patterns.append(Pattern(concept.id, self._compile(concept.id, str(text))))
        self.combos: list[Combo] = []
        for item in data.get("combos", []):
            combo = Combo(item["id"], item["name"], item["group"], item["level"], tuple(item["all"]))
            self._check(combo.id, combo.group, combo.level)
            missing = [c for c in combo.all if c not in self.concepts]
            if missing:
                raise LexiconError(f"combo {combo.id}: unknown concepts {missing}")
            self.combos.append(combo)
        self._index: dict[str, list[Pattern]] = {}
        self._numeric_first: list[Pattern] = []
        self._prefix_first: list[Pattern] = []
        for pattern in self.patterns:
            first = pattern.elements[0]
            for word in first.words:
                self._index.setdefault(word, []).append(pattern)
            if first.ranges or first.any_number:
                self._numeric_first.append(pattern)
            if first.prefixes:
                self._prefix_first.append(pattern)

    def _check(self, ident: str, group: str, level: str) -> None:
        if level not in LEVELS:
            raise LexiconError(f"{ident}: level {level!r} is not one of {LEVELS}")
        if group not in self.groups:
            raise LexiconError(f"{ident}: unknown group {group!r}")

    def _alternatives(
        self, ident: str, spec: str
    ) -> tuple[frozenset[str], tuple[str, ...], tuple[tuple[float, float], ...], bool]:
        words: set[str] = set()
        ranges: list[tuple[float, float]] = []
        any_number = False
        for alt in spec.split("|"):
            if alt.startswith("$"):
                members = self.classes.get(alt[1:])
                if members is None:
                    raise LexiconError(f"{ident}: unknown class {alt}")
                any_number = any_number or _ANY_NUMBER.lower() in members
                words |= members - {_ANY_NUMBER.lower()}
            elif alt.startswith("N:"):
                lo, _, hi = alt[2:].partition("-")
                ranges.append((float(lo), float(hi)))
            elif alt:
                words.add(fold(alt))
        prefixes = tuple(sorted(w[:-1] for w in words if w.endswith("*")))
        if any(len(p) < 4 for p in prefixes):
            raise LexiconError(f"{ident}: prefixes shorter than 4 letters match too much: {spec!r}")
        return frozenset(w for w in words if not w.endswith("*")), prefixes, tuple(ranges), any_number

    def _compile(self, ident: str, text: str) -> tuple[Element, ...]:
        elements: list[Element] = []
        for part in text.split():
            if part.startswith("~"):
                size, _, cls = part[1:].partition(":")
                gap_words = None
                if cls:
                    if cls not in self.classes:
                        raise LexiconError(f"{ident}: unknown class {cls} in {text!r}")
                    gap_words = frozenset(w for w in self.classes[cls] if not w.endswith("*")) - {_ANY_NUMBER.lower()}
                    if _ANY_NUMBER.lower() in self.classes[cls]:
                        gap_words = gap_words | {_ANY_NUMBER}
                elements.append(Element(gap=int(size), gap_words=gap_words))
                continue
            optional = part.endswith("?")
            words, prefixes, ranges, any_number = self._alternatives(ident, part.rstrip("?"))
            elements.append(
                Element(words=words, prefixes=prefixes, ranges=ranges, any_number=any_number, optional=optional)
            )
        first = elements[0] if elements else None
        if first is None or first.gap or first.optional or elements[-1].gap:
            raise LexiconError(f"{ident}: a pattern starts and ends with a required word: {text!r}")
        return tuple(elements)

    def vocabulary(self) -> set[str]:
        """Every word the lexicon can match: what the speller corrects towards."""
        vocab: set[str] = set()
        for pattern in self.patterns:
            for element in pattern.elements:
                vocab |= element.words | (element.gap_words or frozenset())
        for parts in self.compounds:
            vocab |= set(parts)
        return {w for w in vocab if w.isalpha()}

    def match(self, tokens: Sequence[str]) -> list[Mention]:
        """Every concept mention, leftmost-shortest per pattern start; overlapping mentions of one concept merge."""
        found: list[Mention] = []
        n = len(tokens)
        for i, tok in enumerate(tokens):
            candidates: Iterable[Pattern] = self._index.get(tok, ())
            if self._numeric_first and (tok[0].isdigit() or tok in _NUMBER_WORDS):
                candidates = [*candidates, *self._numeric_first]
            if self._prefix_first:
                extra = [p for p in self._prefix_first if tok.startswith(p.elements[0].prefixes)]
                if extra:
                    candidates = [*candidates, *extra]
            for pattern in candidates:
                end = _match(pattern.elements, tokens, i, 0, n)
                if end > 0:
                    found.append(Mention(pattern.concept, i, end))
        return _merge(found)


def _gap_ok(element: Element, tok: str) -> bool:
    if tok in _BARRIERS:
        return False
    if element.gap_words is None:
        return tok not in _NEGATIONS
    return tok in element.gap_words or (_ANY_NUMBER in element.gap_words and number(tok) is not None)


def _match(elements: tuple[Element, ...], tokens: Sequence[str], pos: int, k: int, n: int) -> int:
    if k == len(elements):
        return pos
    element = elements[k]
    if element.gap:
        for skip in range(element.gap + 1):
            if skip:
                p = pos + skip - 1
                if p >= n or not _gap_ok(element, tokens[p]):
                    return -1
            end = _match(elements, tokens, pos + skip, k + 1, n)
            if end >= 0:
                return end
        return -1
    if pos < n and element.accepts(tokens[pos]):
        end = _match(elements, tokens, pos + 1, k + 1, n)
        if end >= 0:
            return end
    if element.optional:
        return _match(elements, tokens, pos, k + 1, n)
    return -1


def _merge(mentions: list[Mention]) -> list[Mention]:
    by_concept: dict[str, list[Mention]] = {}
    for m in sorted(mentions, key=lambda m: (m.concept, m.start, m.end)):
        spans = by_concept.setdefault(m.concept, [])
        if spans and m.start < spans[-1].end:
            last = spans[-1]
            spans[-1] = Mention(m.concept, last.start, max(last.end, m.end))
        else:
            spans.append(m)
    return sorted((m for spans in by_concept.values() for m in spans), key=lambda m: (m.start, m.end, m.concept))


class _WordLoader(yaml.SafeLoader):
    """YAML whose bare words stay words: YAML 1.1 reads "no", "on" and "off" as booleans, which a lexicon of
    negations cannot afford."""


_WordLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_data(name: str) -> Any:
    text = resources.files("lockbox.routing.classify").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return yaml.load(text, Loader=_WordLoader)  # noqa: S506 - a SafeLoader without the boolean resolver


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` (a file of data/lexicon.d) added to ``base``: compounds, class members, groups, new concepts and
    combos, and patterns for a concept ``base`` already has (its id alone is enough). A lexicon grows by topic files
    rather than one ever longer file; every file goes through the same checks at load."""
    out = {key: (dict(value) if isinstance(value, dict) else list(value)) for key, value in base.items()}
    out["compounds"] = list(out.get("compounds", [])) + list(extra.get("compounds", []))
    classes = out["classes"] = dict(out.get("classes", {}))
    for name, words in (extra.get("classes") or {}).items():
        classes[name] = list(classes.get(name, [])) + [w for w in words if w not in classes.get(name, [])]
    out["groups"] = {**dict(base.get("groups") or {}), **dict(extra.get("groups") or {})}
    concepts = {str(c["id"]): dict(c) for c in out.get("concepts", [])}
    for item in extra.get("concepts") or []:
        known = concepts.get(str(item["id"]))
        if known is None:
            concepts[str(item["id"])] = dict(item)
        else:
            known["patterns"] = list(known["patterns"]) + [p for p in item["patterns"] if p not in known["patterns"]]
    out["concepts"] = list(concepts.values())
    out["combos"] = list(out.get("combos", [])) + list(extra.get("combos") or [])
    return out


def load() -> Lexicon:
    data = load_data("lexicon.yaml")
    extras = resources.files("lockbox.routing.classify").joinpath("data/lexicon.d")
    if extras.is_dir():
        for item in sorted(extras.iterdir(), key=lambda i: i.name):
            if item.name.endswith(".yaml"):
                data = merge(data, load_data(f"lexicon.d/{item.name}"))
    return Lexicon(data)
