"""The migrations build exactly the schema the models describe (what ``alembic check`` asserts)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from lockbox.db.all_models import metadata


def test_migrated_schema_matches_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == []
