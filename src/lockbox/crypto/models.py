"""How many times each key-encryption key has sealed, against the random-nonce limit."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer
from sqlalchemy.orm import Mapped, mapped_column

from lockbox.db.base import Base


class KeyUsage(Base):
    __tablename__ = "key_usage"

    key_version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seals: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
