"""Request and response bodies of the PHI scan API: offsets and kinds only, never the words found."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["name", "mrn", "birth_date", "phone", "address", "ssn", "email", "diagnosis", "medication", "icd10"]


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The size of the largest message body plus a subject; longer text is split by the caller.
    text: str = Field(min_length=1, max_length=50_000)


class FindingOut(BaseModel):
    kind: Kind
    start: int = Field(description="offset of the first character, in Unicode code points")
    end: int = Field(description="offset after the last character")


class ScanResult(BaseModel):
    risk: Literal["none", "low", "high"]
    kinds: list[Kind] = Field(description="distinct kinds found, sorted")
    findings: list[FindingOut]
    stays_secure: bool = Field(description="whether this content must stay in the message center under the "
                                           "clinic's security mode (always: yes; adaptive: when risk is high)")
