"""FHIR R4 validation with fhir.resources' R4B models, both ways: what Lockbox emits is checked before it is
sent, what the EHR answers is checked before routing trusts it. Errors name field paths, never values."""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from lockbox.fhir.exceptions import FhirBadData, FhirInvalidResource

# Enough to locate the fault; the values themselves may be PHI and never appear.
_MAX_PATHS = 3
_FIELD = re.compile(r"[A-Za-z0-9_]{1,40}")


def _part(p: object) -> str:
    # Field names and indices only: an unexpected key in the EHR's JSON is its data, not ours to repeat.
    text = str(p)
    return text if _FIELD.fullmatch(text) else "?"


def _paths(exc: ValidationError) -> str:
    paths = []
    for err in exc.errors()[:_MAX_PATHS]:
        loc = ".".join(_part(p) for p in err.get("loc", ()))
        paths.append(f"{loc or 'resource'} ({err.get('type', 'invalid')})")
    return ", ".join(paths)


def _model(resource: Any) -> tuple[str, type[Any]]:
    if not isinstance(resource, dict):
        raise TypeError("not a JSON object")
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or not kind.isalpha():
        raise TypeError("no resourceType")
    try:
        return kind, get_fhir_model_class(kind)
    except KeyError:
        raise TypeError(f"unknown resourceType {kind[:40]}") from None


def check_outgoing(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as FHIR JSON once it validates; FhirInvalidResource (never sent) when it does not."""
    try:
        kind, model = _model(resource)
    except TypeError as exc:
        raise FhirInvalidResource(str(exc)) from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise FhirInvalidResource(f"{kind}: {_paths(exc)}") from None
    return resource


def check_incoming(resource: Any, *, expected: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """A resource the EHR sent, validated; FhirBadData naming the type and the failing fields otherwise."""
    try:
        kind, model = _model(resource)
    except TypeError as exc:
        raise FhirBadData(str(exc)) from None
    wanted = (expected,) if isinstance(expected, str) else expected
    if wanted is not None and kind not in wanted:
        raise FhirBadData(f"expected {' or '.join(wanted)}, got {kind[:40]}")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise FhirBadData(f"{kind}: {_paths(exc)}") from None
    return dict(resource)
