"""The recognisers behind ``phi.service.scan``: each returns spans of one kind; ``find_all`` resolves overlaps.

Measured against presidio-analyzer's pattern recognisers on tests/data/phi/corpus.jsonl (bench/phi.py, figures
in docs/phi.md): phone numbers come from ``phonenumbers`` (Google's libphonenumber, which presidio uses too); the
rest are written here because no library serves them without an NLP model download: presidio found 52% of the
emails, 64% of the SSNs and 64% of the birth dates (its DateRecognizer cannot tell a birth date from an
appointment), has no MRN, name-on-file or clinical-term recogniser, pulls in tldextract (which fetches the public
suffix list at run time) and takes over a second to import. drug-named-entity-recognition's dictionary takes 6 s
to load, so the medication lexicon is our own.
"""

from __future__ import annotations

import bisect
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from functools import cache, lru_cache
from importlib import resources

import phonenumbers
import yaml
from rapidfuzz.distance import OSA

from lockbox.phi.service import Finding
from lockbox.routing.classify.text import known_words

log = logging.getLogger(__name__)
# When two spans overlap, the more specific kind wins; then the longer span.
_PRIORITY = {"email": 0, "ssn": 1, "mrn": 2, "icd10": 3, "birth_date": 4, "phone": 5, "address": 6, "name": 7,
             "medication": 8, "diagnosis": 9}
DEFAULT_MRN_PATTERN = r"[A-Z]{1,3}\d{5,9}"


def fold(text: str) -> str:
    """Lower case without accents, same length as ``text`` so offsets carry over."""
    out = []
    for ch in text:
        base = unicodedata.normalize("NFD", ch)[0]
        low = base.lower()
        out.append(low if len(low) == 1 else base)
    return "".join(out)


# --- email, SSN -------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\d-])")
_SSN_CONTEXT = re.compile(r"(ssn|s\.s\.n\.?|ss\s?#|social(\s+security)?(\s+(number|no\.?|#))?|seguro\s+social)"
                          r"[\s:#.-]*(is\s+|es\s+)?$")


def emails(text: str) -> Iterator[Finding]:
    for m in _EMAIL.finditer(text):
        yield Finding("email", m.start(), m.end())


def ssns(text: str, folded: str) -> Iterator[Finding]:
    for m in _SSN.finditer(text):
        area, sep, group, serial = m.group(1), m.group(2), m.group(3), m.group(4)
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        # Nine bare digits are an SSN only when the text says so; dashed or spaced ones always are.
        if not sep and not _SSN_CONTEXT.search(folded[max(0, m.start() - 30):m.start()]):
            continue
        yield Finding("ssn", m.start(), m.end())


# --- MRN --------------------------------------------------------------------------------------------------------

_MRN_CONTEXT = re.compile(
    r"\b(mrn|m\.r\.n\.?|medical\s+record(\s+(number|no\.?|#))?|record\s+(number|no\.?|#)|chart\s+(number|no\.?|#)"
    r"|patient\s+(id|number|no\.?|#)|expediente(\s+(numero|no\.?|#))?|numero\s+de\s+expediente|historia\s+clinica)"
    r"[\s:#.-]*(?:is\s+|es\s+)?$"
)
_MRN_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{2,24}")


@lru_cache(maxsize=8)
def _mrn_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(rf"(?<![\w-])(?:{pattern})(?![\w-])")
    except re.error:
        # A broken setting must not stop outbound mail from being scanned: fall back, and say so (no text).
        log.warning("LOCKBOX_PHI_MRN_PATTERN is not a valid regular expression; using the default")
        return re.compile(rf"(?<![\w-])(?:{DEFAULT_MRN_PATTERN})(?![\w-])")


_NOT_MRN_CONTEXT = re.compile(r"\b(member|group|policy|subscriber|claim|order|invoice|tracking|lot|npi|license)"
                              r"(\s+(id|number|no\.?|#))?[\s:#.-]*$")


def mrns(text: str, folded: str, pattern: str) -> Iterator[Finding]:
    for m in _mrn_regex(pattern).finditer(text):
        # An insurer's member ID or an order number has the same shape; the word before it tells them apart.
        if not _NOT_MRN_CONTEXT.search(folded[max(0, m.start() - 30):m.start()]):
            yield Finding("mrn", m.start(), m.end())
    # Whatever follows "MRN:" is one, if it has a digit, whatever the clinic's format.
    for m in _MRN_TOKEN.finditer(text):
        if any(c.isdigit() for c in m.group()) and _MRN_CONTEXT.search(folded[max(0, m.start() - 40):m.start()]):
            yield Finding("mrn", m.start(), m.end())


# --- dates ------------------------------------------------------------------------------------------------------

_MONTHS = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7, "august": 8,
    "september": 9, "october": 10, "november": 11, "december": 12, "jan": 1, "feb": 2, "mar": 3, "apr": 4,
    "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7, "agosto": 8,
    "septiembre": 9, "setiembre": 9, "octubre": 10, "noviembre": 11, "diciembre": 12, "ene": 1, "abr": 4,
    "ago": 8, "dic": 12,
}
_MONTH = "(?P<mon>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>\d{4}|'\d{2})"
_DATE_FORMS = [
    re.compile(r"(?<![\d/.-])(?P<a>\d{1,2})(?P<s>[/.-])(?P<b>\d{1,2})(?P=s)(?P<year>\d{4}|\d{2})(?![\d/-])"),
    re.compile(r"(?<![\d/.-])(?P<year>\d{4})(?P<s>[/.-])(?P<a>\d{1,2})(?P=s)(?P<b>\d{1,2})(?![\d/-])"),
    re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b"),
    re.compile(rf"\b{_DAY}(?:\s+de|\s+of)?\s+{_MONTH},?(?:\s+de(l)?)?\s+{_YEAR}\b"),
    # Clinical systems' 12-Jan-1960 and Jan-12-1960.
    re.compile(rf"\b{_DAY}[-/]{_MONTH}[-/]{_YEAR}\b"),
    re.compile(rf"\b{_MONTH}[-/]{_DAY}[-/]{_YEAR}\b"),
]
_BIRTH_CONTEXT = re.compile(
    r"(\bdob|\bd\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthdate|\bborn(\s+on)?|birthday|\bb\.|\bbday"
    r"|fecha\s+de\s+nacimiento|f\.\s*nac\.?|\bnacio(\s+el)?|nacid[oa](\s+el)?|cumpleanos|\bfdn)"
    r"[\s:#.,-]*(is\s+|es\s+|el\s+|on\s+)?$"
)
# A full date this many years old is taken for a birth date: clinics' messages about visits, results and
# refills name recent dates; a date decades back next to a patient is almost always a DOB.
_BIRTH_AGE_YEARS = 12


def _year_of(raw: str, *, four_digit_only: bool) -> int | None:
    raw = raw.lstrip("'")
    if len(raw) == 4:
        return int(raw)
    if four_digit_only:
        return None
    yy = int(raw)
    return 2000 + yy if 2000 + yy <= date.today().year else 1900 + yy


def birth_dates(text: str, folded: str, *, today: date | None = None) -> Iterator[Finding]:
    this_year = (today or date.today()).year
    seen: set[tuple[int, int]] = set()
    for form in _DATE_FORMS:
        for m in form.finditer(folded):
            span = (m.start(), m.end())
            if any(s <= span[0] < e or span[0] <= s < span[1] for s, e in seen):
                continue
            groups = m.groupdict()
            if groups.get("mon") is not None:
                if not 1 <= int(groups["day"]) <= 31:
                    continue
            else:
                a, b = int(groups["a"]), int(groups["b"])
                # US month/day first, but 14/03/1962 (Spanish order) is read as day/month.
                if not ((1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)):
                    continue
            context = bool(_BIRTH_CONTEXT.search(folded[max(0, m.start() - 30):m.start()]))
            year = _year_of(groups["year"], four_digit_only=not context)
            if year is None or not 1890 <= year <= this_year:
                continue
            if context or year <= this_year - _BIRTH_AGE_YEARS:
                seen.add(span)
                yield Finding("birth_date", *span)


# --- phone numbers ----------------------------------------------------------------------------------------------

_NOT_PHONE_CONTEXT = re.compile(r"\b(npi|tracking|order|invoice|account|acct|ticket|reference|ref|claim|member"
                                r"|policy|routing|tax)(\s+(id|number|no\.?|#))?[\s:#.-]*(is\s+)?$")


def phones(text: str, folded: str) -> Iterator[Finding]:
    # POSSIBLE, not VALID: fictional 555 numbers and new area codes are still phone numbers to a reader.
    for m in phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.POSSIBLE):
        digits = sum(c.isdigit() for c in m.raw_string)
        if digits < 10:  # 7-digit locals collide with MRNs and amounts; a clinic's phone has an area code
            continue
        # Digits inside a longer token (a tracking number) or named as another number (NPI, order #).
        if (m.start > 0 and text[m.start - 1].isalnum()) or (m.end < len(text) and text[m.end].isalnum()):
            continue
        if _NOT_PHONE_CONTEXT.search(folded[max(0, m.start - 30):m.start]):
            continue
        yield Finding("phone", m.start, m.end)


# --- street addresses -------------------------------------------------------------------------------------------

_SUFFIX = (r"(street|st|avenue|ave|av|road|rd|boulevard|blvd|drive|dr|lane|ln|way|court|ct|place|pl|terrace|ter"
           r"|parkway|pkwy|highway|hwy|circle|cir|square|sq|trail|trl|loop|row|crescent|alley|pike|plaza)")
_UNIT = r"(?:,?\s+(?:apt|apartment|unit|suite|ste|#|no\.?|depto\.?)\.?\s*#?\s*[a-z0-9-]{1,6})?"
_CITY_TAIL = (r"(?:,[ \t]*[a-z][a-z .'-]{1,30}(?:,[ \t]*[a-z]{2}\b|,?[ \t]+[a-z]{2}(?=[ \t]+\d{5}))?"
              r"(?:[ \t]+\d{5}(?:-\d{4})?)?)?")
_ADDRESS = re.compile(
    rf"(?<![\w-])\d{{1,6}}[a-z]?\s+(?:(?:n|s|e|w|ne|nw|se|sw|north|south|east|west)\.?\s+)?"
    rf"(?:[a-z0-9][a-z'-]*\.?\s+){{1,3}}{_SUFFIX}\b\.?{_UNIT}"
)
_ADDRESS_ES = re.compile(rf"\b(?:calle|avenida|av\.|camino|paseo|carrera)\s+(?:[a-z0-9][a-z'-]*\s+){{0,3}}"
                         rf"(?:#\s*)?\d{{1,6}}{_UNIT}")
_PO_BOX = re.compile(r"\bp\.?\s?o\.?\s+box\s+\d{1,6}\b")
_NOT_STREET = frozenset({"mg", "ml", "pills", "tablets", "times", "days", "weeks", "hours", "minutes", "mcg", "units",
                         "years", "months", "of", "the", "and", "to", "at", "a", "in", "on", "for", "with", "my",
                         "rpm", "gb", "mb", "tb", "hard", "mile", "miles", "km", "feet", "ft"})


def addresses(text: str, folded: str) -> Iterator[Finding]:
    for m in _ADDRESS.finditer(folded):
        words = folded[m.start():m.end()].split()
        if any(w.strip(".,") in _NOT_STREET for w in words[1:-1]):
            continue
        end = m.end()
        tail = re.match(_CITY_TAIL, folded[end:])
        # A city and state only count when they look like one ("Springfield, IL 62704" or ", Springfield, IL").
        if tail and tail.group() and (re.search(r"\d{5}", tail.group()) or re.search(r",\s*[a-z]{2}$", tail.group())):
            end += len(tail.group())
        yield Finding("address", m.start(), end)
    for rx in (_ADDRESS_ES, _PO_BOX):
        for m in rx.finditer(folded):
            yield Finding("address", m.start(), m.end())


# --- ICD-10 -----------------------------------------------------------------------------------------------------

_ICD10 = re.compile(r"(?<![\w.-])([A-TV-Z]\d[0-9AB])(\.[0-9A-Z]{1,4})?(?![\w-])")
_ICD_CONTEXT = re.compile(r"(icd(-?10)?(-?cm)?|dx|diagnosis(\s+code)?|code|codes|codigo|diagnostico)[\s:#,.-]*"
                          r"([a-z]\d[0-9a-z](\.[0-9a-z]{1,4})?[\s,;/&and]*)*$")


_LIST_GAP = re.compile(r"\s*(,|;|/|&|\band\b)?\s*")


def icd10_codes(text: str, folded: str) -> Iterator[Finding]:
    candidates = list(_ICD10.finditer(text))
    # With a decimal part it is unmistakable; "E11" alone needs "ICD"/"dx"/"code" nearby ("B12" is a vitamin)
    # or to stand in a list next to a code that is one ("I10, E11.65").
    sure = [bool(m.group(2)) or bool(_ICD_CONTEXT.search(folded[max(0, m.start() - 40):m.start()]))
            for m in candidates]
    # Spread along runs of listed codes: once rightwards, once leftwards, covers every run.
    linked = [i > 0 and bool(_LIST_GAP.fullmatch(text[candidates[i - 1].end():m.start()]))
              for i, m in enumerate(candidates)]
    for i in range(1, len(candidates)):
        sure[i] = sure[i] or (linked[i] and sure[i - 1])
    for i in range(len(candidates) - 2, -1, -1):
        sure[i] = sure[i] or (linked[i + 1] and sure[i + 1])
    for m, ok in zip(candidates, sure, strict=True):
        if ok:
            yield Finding("icd10", m.start(), m.end())


# --- clinical terms ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_ROUTING_MED_CLASSES = ("CRITICAL_MED", "ANTICOAG")
_ROUTING_NOT_MEDS = frozenset({"transplant", "inhaler", "inhalador", "nitro", "anticonvulsant", "anticonvulsivo",
                               "anticonvulsivos"})


@dataclass(frozen=True)
class _Lexicon:
    phrases: re.Pattern[str]
    not_terms: re.Pattern[str]
    kinds: dict[str, str]
    fuzzy: dict[str, list[str]]  # deletion variant -> single words of 7+ letters


def _deletions(word: str) -> set[str]:
    return {word} | {word[:i] + word[i + 1:] for i in range(len(word))}


@cache
def _lexicon() -> _Lexicon:
    data = yaml.safe_load(resources.files("lockbox.phi").joinpath("data/terms.yaml").read_text("utf-8"))
    kinds: dict[str, str] = {}
    for kind in ("medication", "diagnosis"):
        for term in data[kind]:
            kinds.setdefault(fold(str(term)), kind)
    # The routing lexicon's critical medications (read-only reuse; compounds there are joined with "_").
    routing = yaml.safe_load(resources.files("lockbox.routing.classify").joinpath("data/lexicon.yaml")
                             .read_text("utf-8"))
    for cls in _ROUTING_MED_CLASSES:
        for word in routing["classes"].get(cls, []):
            if word not in _ROUTING_NOT_MEDS:
                kinds.setdefault(str(word).replace("_", " "), "medication")
    alternatives = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in sorted(kinds, key=len, reverse=True))
    phrases = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])")
    fuzzy: dict[str, list[str]] = {}
    for term in kinds:
        if " " not in term and len(term) >= 7 and term.isalpha():
            for variant in _deletions(term):
                fuzzy.setdefault(variant, []).append(term)
    not_terms = re.compile("|".join(re.escape(fold(str(t))) for t in data.get("not_terms", [])) or "(?!)")
    return _Lexicon(phrases=phrases, not_terms=not_terms, kinds=kinds, fuzzy=fuzzy)


def clinical_terms(folded: str) -> Iterator[Finding]:
    lex = _lexicon()
    taken = [(m.start(), m.end()) for m in lex.not_terms.finditer(folded)]
    for m in lex.phrases.finditer(folded):
        if any(s <= m.start() < e for s, e in taken):
            continue
        term = re.sub(r"\s+", " ", m.group())
        taken.append((m.start(), m.end()))
        yield Finding(lex.kinds[term], m.start(), m.end())
    # One typo in a long word ("metfromin", "hypertenion"); short words would match too much by accident, and
    # dictionary words are no typos ("addition" is not "addiction", "creator" not "Crestor"): the routing
    # classifier's English and Spanish word list, shared read-only.
    for m in _WORD.finditer(folded):
        word = m.group()
        if len(word) < 6 or word in lex.kinds or any(s <= m.start() < e for s, e in taken):
            continue
        near = next((t for v in _deletions(word) for t in lex.fuzzy.get(v, ()) if OSA.distance(word, t) <= 1), None)
        if near is not None and word not in known_words():
            yield Finding(lex.kinds[near], m.start(), m.end())


def warm() -> None:
    """Compile the lexicons and load the word list now (about a second) rather than on the first message."""
    _lexicon()
    known_words()
    _default_mrn_pattern()


# --- names of patients on file ----------------------------------------------------------------------------------

_NAME_GAP = re.compile(r"\s+|-")
_SURNAME_FIRST_GAP = re.compile(r"\s*,\s*|\s+")
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "sr", "sra", "srta", "jr", "ii", "iii"})


@dataclass(frozen=True)
class _NameIndex:
    names: tuple[tuple[str, ...], ...]
    first: dict[str, list[int]]  # deletion variant of a given name -> names
    last: dict[str, list[int]]  # deletion variant of a surname -> names


# Name parts: hyphenated surnames are two parts ("Al-Sayed" is also written "Al Sayed"); O'Brien stays one.
_NAME_PART = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
_POSSESSIVE = re.compile(r"['\u2019]s?$")


def _name_tokens(name: str) -> tuple[str, ...]:
    return tuple(w for w in (m.group() for m in _NAME_PART.finditer(fold(name))) if w not in _TITLES)


def _name_words(folded: str) -> list[tuple[str, int, int]]:
    words = []
    for m in _NAME_PART.finditer(folded):
        word, end = m.group(), m.end()
        possessive = _POSSESSIVE.search(word)
        if possessive and len(word) - len(possessive.group()) > 1:  # "Smith's", "Summers'"; not "O'"
            word, end = word[:possessive.start()], end - len(possessive.group())
        words.append((word, m.start(), end))
    return words


@lru_cache(maxsize=4)
def _name_index(names: tuple[str, ...]) -> _NameIndex:
    parsed = tuple(t for t in (_name_tokens(n) for n in names) if len(t) >= 2)
    first: dict[str, list[int]] = {}
    last: dict[str, list[int]] = {}
    for i, tokens in enumerate(parsed):
        for variant in _variants(tokens[0]):
            first.setdefault(variant, []).append(i)
        for variant in _variants(tokens[-1]) | (_variants(tokens[1]) if len(tokens) > 2 else set()):
            last.setdefault(variant, []).append(i)
    return _NameIndex(parsed, first, last)


def _variants(token: str) -> set[str]:
    return _deletions(token) if len(token) >= 4 else {token}


def _same(word: str, token: str) -> bool:
    """One typo allowed in name parts of 4 letters or more ("Whitfeld", "Jnoes"); short ones exactly."""
    if word == token:
        return True
    return len(token) >= 4 and len(word) >= 4 and OSA.distance(word, token) <= 1


def _lookup(table: dict[str, list[int]], word: str) -> set[int]:
    found: set[int] = set()
    for variant in _deletions(word) if len(word) >= 4 else {word}:
        found.update(table.get(variant, ()))
    return found


def names(text: str, folded: str, names_on_file: tuple[str, ...]) -> Iterator[Finding]:
    if not names_on_file:
        return
    index = _name_index(names_on_file)
    words = _name_words(folded)
    for i, (word, start, _) in enumerate(words):
        # Given [middle initial] surname(s): "Pat Jones", "Pat A. Jones", "Maria Garcia Lopez".
        for n in _lookup(index.first, word):
            tokens = index.names[n]
            if not _same(word, tokens[0]):
                continue
            end = _match_rest(folded, words, i + 1, tokens[1:], words[i][2], allow_initial=True)
            if end is not None:
                yield Finding("name", start, end)
        # Surname(s), given: "Jones, Pat", "Garcia Lopez, Maria", and lists' "JONES PAT" without the comma.
        for n in _lookup(index.last, word):
            tokens = index.names[n]
            for surnames in {tokens[1:], tokens[-1:], tokens[1:2]}:
                if not _same(word, surnames[0]):
                    continue
                end = _match_rest(folded, words, i + 1, surnames[1:], words[i][2], allow_initial=False)
                j = i + len(surnames)
                if end is None or j >= len(words):
                    continue
                if _SURNAME_FIRST_GAP.fullmatch(folded[end:words[j][1]]) and _same(words[j][0], tokens[0]):
                    yield Finding("name", start, words[j][2])
                    break


def _match_rest(folded: str, words: list[tuple[str, int, int]], i: int, tokens: tuple[str, ...], end: int,
                *, allow_initial: bool) -> int | None:
    """End offset if ``tokens`` follow from word ``i`` on, separated by spaces (a middle initial may come first)."""
    for k, token in enumerate(tokens):
        if i >= len(words) or not _NAME_GAP.fullmatch(folded[end:words[i][1]]):
            return None
        if allow_initial and k == 0 and len(words[i][0]) == 1 and not _same(words[i][0], token):
            end, i = words[i][2], i + 1
            if i >= len(words) or not re.fullmatch(r"\.?\s+", folded[end:words[i][1]]):
                return None
        if not _same(words[i][0], token):
            return None
        end, i = words[i][2], i + 1
    return end


# --- all together -----------------------------------------------------------------------------------------------

@cache
def _default_mrn_pattern() -> str:
    from lockbox.config import load_settings

    return load_settings().phi_mrn_pattern


def find_all(text: str, *, names_on_file: Iterable[str] = (), mrn_pattern: str | None = None) -> list[Finding]:
    folded = fold(text)
    pattern = mrn_pattern or _default_mrn_pattern()
    found: list[Finding] = [
        *emails(text), *ssns(text, folded), *mrns(text, folded, pattern), *icd10_codes(text, folded),
        *birth_dates(text, folded), *phones(text, folded), *addresses(text, folded),
        *names(text, folded, tuple(names_on_file)), *clinical_terms(folded),
    ]
    return _resolve(found)


def _resolve(found: list[Finding]) -> list[Finding]:
    found.sort(key=lambda f: (_PRIORITY[f.kind], -(f.end - f.start), f.start))
    # Kept spans never overlap, so a new one need only be checked against its neighbours by start.
    starts: list[int] = []
    kept: list[Finding] = []
    for f in found:
        i = bisect.bisect_left(starts, f.start)
        if i > 0 and kept[i - 1].end > f.start:
            continue
        if i < len(kept) and kept[i].start < f.end:
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept
