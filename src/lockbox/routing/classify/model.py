"""Topic and urgency, and an emergency safety net: TF-IDF word and character n-grams, logistic regression,
trained on first use from data shipped in the package (never the test split); nothing downloaded or unpickled."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

# Long stories cost character n-grams and add little to the topic; the lexicon reads every word regardless.
MAX_MODEL_TOKENS = 200


@dataclass(frozen=True)
class Record:
    id: str
    lang: str
    subject: str
    body: str
    urgency: str
    topic: str
    split: str


def load_corpus(text: str | None = None, name: str = "corpus.jsonl") -> list[Record]:
    """A corpus shipped in the package (by default the one with the train and test splits), or JSONL text of the
    same shape (id, lang, subject, body, urgency, topic, split)."""
    if text is None:
        text = resources.files("lockbox.routing.classify").joinpath(f"data/{name}").read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        if line.strip():
            row: dict[str, Any] = json.loads(line)
            out.append(
                Record(
                    str(row["id"]), str(row.get("lang", "")), str(row.get("subject", "")), str(row["body"]),
                    str(row["urgency"]), str(row["topic"]), str(row.get("split", "test")),
                )
            )
    return out


@dataclass(frozen=True)
class Prediction:
    topic: str
    topic_confidence: float
    urgency_probabilities: dict[str, float]
    emergency_probability: float  # from the words alone


class _Features:
    """Word (1-2) and character (2-5, within words) TF-IDF, each L2-normalised, side by side."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizers = [
            TfidfVectorizer(
                analyzer="word",
                token_pattern=r"\S+",  # noqa: S106 - a regular expression, not a password
                ngram_range=(1, 2),
                sublinear_tf=True,
                dtype=np.float64,
            ),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, dtype=np.float64),
        ]

    def fit_transform(self, texts: Sequence[str]) -> Any:
        from scipy.sparse import hstack

        texts = [_clip(t) for t in texts]
        return hstack([v.fit_transform(texts) for v in self.vectorizers]).tocsr()

    def transform(self, texts: Iterable[str]) -> Any:
        from scipy.sparse import hstack

        texts = [_clip(t) for t in texts]
        return hstack([v.transform(texts) for v in self.vectorizers]).tocsr()


class _FastFeatures:
    """The same vector as _Features.transform for one text, as (indices, values), without scikit-learn's per-call
    validation, which costs more than the arithmetic at this size (a routing decision has a 10 ms budget)."""

    def __init__(self, features: _Features) -> None:
        self._parts = []
        offset = 0
        for v in features.vectorizers:
            self._parts.append((v.build_analyzer(), v.vocabulary_, np.asarray(v.idf_, dtype=np.float64), offset))
            offset += len(v.vocabulary_)

    def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        text = _clip(text)
        indices: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for analyze, vocabulary, idf, offset in self._parts:
            counts: dict[int, int] = {}
            for gram in analyze(text):
                j = vocabulary.get(gram)
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            if not counts:
                continue
            idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            val = (1.0 + np.log(tf)) * idf[idx]
            val /= np.sqrt(np.dot(val, val))
            indices.append(idx + offset)
            values.append(val)
        if not indices:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return np.concatenate(indices), np.concatenate(values)


class _FastLinear:
    """Logistic regression's probabilities from its coefficients: softmax for several classes, sigmoid for two."""

    def __init__(self, classifier: Any) -> None:
        self.classes = [c.item() if hasattr(c, "item") else c for c in classifier.classes_]
        self._coef = np.ascontiguousarray(classifier.coef_.T, dtype=np.float64)  # features x outputs
        self._intercept = np.asarray(classifier.intercept_, dtype=np.float64)

    def proba(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        scores = values @ self._coef[indices] + self._intercept
        if len(self.classes) == 2:
            positive = 1.0 / (1.0 + np.exp(-scores[0]))
            return np.array([1.0 - positive, positive])
        scores = np.exp(scores - scores.max())
        return np.asarray(scores / scores.sum())


# The topic and urgency models see the lexicon's findings as extra words, so they learn what a negated emergency
# looks like, and what an emergency the lexicon has no entry for looks like next to one it has. The emergency net
# sees the words alone, so that its mistakes are not the lexicon's: it is there for phrasings no lexicon entry
# covers yet. Only the urgency model learns from the blind rounds as well; the topic model and the net keep to the
# train split (in_train), so that topics, and the routes that follow them, stay as they were.
class TriageModel:
    def __init__(
        self,
        texts: Sequence[str],
        plain: Sequence[str],
        topics: Sequence[str],
        urgencies: Sequence[str],
        in_train: Sequence[bool] | None = None,
    ) -> None:
        from sklearn.linear_model import LogisticRegression

        chosen = np.ones(len(texts), dtype=bool) if in_train is None else np.asarray(in_train, dtype=bool)
        self.features = _Features()
        x = self.features.fit_transform(texts)
        self.topic = LogisticRegression(C=20.0, max_iter=4000, class_weight="balanced")
        self.topic.fit(x[chosen], [t for t, keep in zip(topics, chosen, strict=True) if keep])
        self.urgency = LogisticRegression(C=10.0, max_iter=4000, class_weight="balanced").fit(x, list(urgencies))
        self.plain = _Features()
        xp = self.plain.fit_transform([t for t, keep in zip(plain, chosen, strict=True) if keep])
        self.net = LogisticRegression(C=5.0, max_iter=4000, class_weight="balanced")
        self.net.fit(xp, [u == "emergency" for u, keep in zip(urgencies, chosen, strict=True) if keep])
        self._fast_features = _FastFeatures(self.features)
        self._fast_plain = _FastFeatures(self.plain)
        self._topic = _FastLinear(self.topic)
        self._urgency = _FastLinear(self.urgency)
        self._net = _FastLinear(self.net)

    def emergency_probability(self, plain: str) -> float:
        return float(self._net.proba(*self._fast_plain(plain))[self._net.classes.index(True)])

    def urgency_emergency_probability(self, text: str) -> float:
        """The urgency model's emergency share alone (no topic): what a reply's emergency check pays for."""
        return float(self._urgency.proba(*self._fast_features(text))[self._urgency.classes.index("emergency")])

    def predict(self, text: str, plain: str) -> Prediction:
        idx, val = self._fast_features(text)
        topic_p = self._topic.proba(idx, val)
        best = int(np.argmax(topic_p))
        urgency_p = self._urgency.proba(idx, val)
        net_p = self._net.proba(*self._fast_plain(plain))
        return Prediction(
            str(self._topic.classes[best]),
            float(topic_p[best]),
            {str(c): float(p) for c, p in zip(self._urgency.classes, urgency_p, strict=True)},
            float(net_p[self._net.classes.index(True)]),
        )


def _clip(text: str) -> str:
    tokens = text.split()
    if len(tokens) <= MAX_MODEL_TOKENS:
        return text
    # The lexicon's words ride at the end; keep them with the head of the story.
    return " ".join(tokens[:MAX_MODEL_TOKENS] + [t for t in tokens[MAX_MODEL_TOKENS:] if t.startswith("zz")])
