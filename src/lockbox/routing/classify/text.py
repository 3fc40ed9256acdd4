"""How patients write, made matchable: case and accent folding, text-speak and contractions, run-on letters,
merged words, and misspellings corrected towards the lexicon's own words (rapidfuzz), never towards real words."""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from rapidfuzz import process
from rapidfuzz.distance import OSA

SENTENCE_END = "."
_SENTENCE_MARKS = frozenset({".", "!", "?", ";", "\n"})

# One token, as typed, to the words it stands for. English and Spanish share one table: messages mix them.
SPEAK: dict[str, tuple[str, ...]] = {
    # contractions typed without the apostrophe
    "cant": ("can", "not"), "cnt": ("can", "not"), "cannot": ("can", "not"), "cannt": ("can", "not"),
    "dont": ("do", "not"), "dnt": ("do", "not"), "doesnt": ("does", "not"), "didnt": ("did", "not"),
    "wont": ("will", "not"), "isnt": ("is", "not"), "arent": ("are", "not"), "wasnt": ("was", "not"),
    "werent": ("were", "not"), "havent": ("have", "not"), "hasnt": ("has", "not"), "hadnt": ("had", "not"),
    "couldnt": ("could", "not"), "cudnt": ("could", "not"), "wouldnt": ("would", "not"),
    "shouldnt": ("should", "not"), "aint": ("is", "not"), "im": ("i", "am"), "ive": ("i", "have"),
    "youre": ("you", "are"), "hes": ("he", "is"), "shes": ("she", "is"), "thats": ("that", "is"),
    "whats": ("what", "is"), "theres": ("there", "is"),
    # text-speak
    "u": ("you",), "ur": ("your",), "r": ("are",), "rn": ("right", "now"), "pls": ("please",),
    "plz": ("please",), "plss": ("please",), "thx": ("thanks",), "thnx": ("thanks",), "ty": ("thanks",),
    "idk": ("i", "do", "not", "know"), "dunno": ("do", "not", "know"), "b4": ("before",),
    "bc": ("because",), "cuz": ("because",), "coz": ("because",), "bcuz": ("because",), "becuz": ("because",),
    "2day": ("today",), "2nite": ("tonight",), "tonite": ("tonight",), "2night": ("tonight",),
    "tmrw": ("tomorrow",), "tmr": ("tomorrow",), "2morrow": ("tomorrow",), "gonna": ("going", "to"),
    "wanna": ("want", "to"), "gotta": ("got", "to"), "kinda": ("kind", "of"), "hafta": ("have", "to"),
    "ppl": ("people",), "abt": ("about",), "yr": ("year",), "yrs": ("years",), "wk": ("week",),
    "wks": ("weeks",), "mos": ("months",), "mins": ("minutes",), "hrs": ("hours",), "appt": ("appointment",),
    "apt": ("appointment",), "rx": ("prescription",), "hx": ("history",), "sx": ("symptoms",),
    "dx": ("diagnosis",), "w": ("with",), "bday": ("birthday",), "ok": ("okay",),
    # Spanish chat spelling
    "q": ("que",), "xq": ("porque",), "pq": ("porque",), "porq": ("porque",),
    "xk": ("porque",), "tb": ("tambien",), "tmb": ("tambien",),
    "bb": ("bebe",), "dra": ("doctora",), "aki": ("aqui",), "nd": ("nada",),
}
_NT_BASE = {"ca": "can", "wo": "will", "ai": "is", "sha": "shall"}  # "can't" -> ca + n't
_S_IS = frozenset({"it", "he", "she", "that", "what", "there", "here", "who", "where", "how"})
_SUFFIX = {"m": "am", "re": "are", "ve": "have", "ll": "will", "d": "would"}

_SLASHED = [
    (re.compile(r"\bw/o\b"), " without "),
    (re.compile(r"\bw/"), " with "),
    (re.compile(r"\bh/o\b"), " history of "),
    (re.compile(r"\bb/c\b"), " because "),
    (re.compile(r"\by/o\b"), " year old "),
]
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+(?:[.,]\d+)?|[.!?;\n]|[,/]")
_RUNS = re.compile(r"([a-z])\1{2,}")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})

# Function words that tell the two languages apart; words both use ("no", "me", "a", "he") count for neither.
_EN_WORDS = frozenset(
    [
        "the", "and", "is", "are", "was", "were", "i", "my", "you", "your", "she", "it", "this", "that", "with",
        "have", "has", "had", "for", "of", "to", "in", "on", "at", "be", "been", "can", "not", "do", "does", "did",
        "what", "when", "how", "please", "thank", "thanks", "would", "could", "should", "will", "just", "about", "from",
        "but", "or", "because", "they", "we", "our", "his", "her", "him", "am", "today", "yesterday", "since"
    ]
)
_ES_WORDS = frozenset(
    [
        "el", "la", "los", "las", "que", "de", "del", "y", "es", "en", "por", "para", "con", "una", "mi", "tengo",
        "tiene", "esta", "estoy", "pero", "muy", "le", "lo", "se", "su", "hola", "gracias", "porque", "cuando", "como",
        "donde", "hijo", "hija", "mama", "papa", "ayer", "hoy", "desde", "hace", "puedo", "necesito", "quiero", "usted",
        "favor", "buenos", "buenas", "dias", "tardes", "cita"
    ]
)
_SPANISH_MARKS = frozenset("áéíóúñ¿¡ü")


def fold(text: str) -> str:
    """Lower case, no accents, one apostrophe: 'Me DUELE el pecho' and 'me duele el pécho' read the same."""
    text = text.translate(_APOSTROPHES).lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def detect_language(raw: str, tokens: Iterable[str]) -> str:
    """'es' when Spanish function words (and Spanish letters) outnumber English ones, else 'en'."""
    en = es = 0
    for tok in tokens:
        if tok in _EN_WORDS:
            en += 1
        elif tok in _ES_WORDS:
            es += 1
    es += 2 * sum(1 for ch in raw.lower() if ch in _SPANISH_MARKS)
    return "es" if es > en else "en"


def _expand(tok: str) -> tuple[str, ...]:
    if "'" in tok:
        head, _, tail = tok.partition("'")
        if tail == "t" and head.endswith("n"):
            base = head[:-1]
            return (_NT_BASE.get(base, base), "not")
        if tail == "s":
            return (head, "is") if head in _S_IS else (head,)
        if tail in _SUFFIX:
            return (head, _SUFFIX[tail])
        return (head + tail,)
    return SPEAK.get(tok, (tok,))


def raw_tokens(text: str) -> list[str]:
    """Folded, expanded tokens; sentence marks become '.', commas and slashes stay as tokens."""
    folded = fold(text)
    for pattern, replacement in _SLASHED:
        folded = pattern.sub(replacement, folded)
    folded = _RUNS.sub(r"\1\1", folded)
    out: list[str] = []
    for tok in _TOKEN.findall(folded):
        if tok in _SENTENCE_MARKS:
            if not out or out[-1] != SENTENCE_END:
                out.append(SENTENCE_END)
        elif tok[0].isdigit():
            out.append(tok.replace(",", "."))
        else:
            out.extend(_expand(tok))
    return out


class Speller:
    """Corrects a token no dictionary knows to the nearest lexicon word, and splits run-together lexicon words
    ('chestpain'). Real words are never touched ('cooking' stays 'cooking' although 'choking' is one edit away),
    and a correction keeps the first letter and needs a long enough word (or a vowel-less abbreviation like
    'chst'): the Spanish word list is thin on verb forms, and 'anos' must not become 'manos'."""

    def __init__(self, lexicon_words: Iterable[str], known_words: Iterable[str]) -> None:
        self._lexicon = frozenset(lexicon_words)
        self._known = frozenset(known_words) | self._lexicon
        self._targets: dict[str, list[str]] = {}
        for word in sorted(w for w in self._lexicon if len(w) >= 4 and w.isalpha()):
            self._targets.setdefault(word[0], []).append(word)

    def correct(self, tok: str) -> tuple[str, ...]:
        return self._cached(tok)

    @lru_cache(maxsize=32768)  # noqa: B019 - one Speller per process, kept for the process's life
    def _cached(self, tok: str) -> tuple[str, ...]:
        if len(tok) < 4 or not tok.isalpha() or tok in self._known:
            return (tok,)
        if len(tok) >= 7:
            for i in range(3, len(tok) - 2):
                if tok[:i] in self._lexicon and tok[i:] in self._lexicon:
                    return (tok[:i], tok[i:])
        if len(tok) < 5 and sum(ch in "aeiouy" for ch in tok) > 1:
            return (tok,)
        targets = self._targets.get(tok[0])
        if not targets:
            return (tok,)
        cutoff = 1 if len(tok) < 9 else 2
        best = process.extractOne(tok, targets, scorer=OSA.distance, score_cutoff=cutoff)
        return (best[0],) if best is not None else (tok,)


_known_words: frozenset[str] | None = None
_known_lock = threading.Lock()


def known_words() -> frozenset[str]:
    """English and Spanish dictionary words (pyspellchecker's frequency lists), folded: what is not a typo."""
    global _known_words
    with _known_lock:
        if _known_words is None:
            from spellchecker import SpellChecker

            words = SpellChecker(language=["en", "es"], distance=1).word_frequency.dictionary
            _known_words = frozenset(fold(w) for w in words if 4 <= len(w) <= 24)
        return _known_words


def merge_compounds(tokens: list[str], compounds: dict[tuple[str, ...], str]) -> list[str]:
    """Fixed phrases become one token ('blood pressure' is not chest 'pressure'); longest phrase first."""
    if not compounds:
        return tokens
    firsts = {k[0] for k in compounds}
    longest = max(len(k) for k in compounds)
    out: list[str] = []
    i = 0
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok in firsts:
            for size in range(min(longest, n - i), 1, -1):
                merged = compounds.get(tuple(tokens[i : i + size]))
                if merged is not None:
                    out.append(merged)
                    i += size
                    break
            else:
                out.append(tok)
                i += 1
        else:
            out.append(tok)
            i += 1
    return out
