"""correlation keys: the hashed keys each account is filed under, for targeted candidate lookups

Filled here for the accounts already in the directory (the same keys a sync writes,
`directory_sync.correlate.Probe.index_keys`).

Revision ID: 0008_correlation_keys
Revises: 0007_upstream
Create Date: 2026-11-23 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_correlation_keys"
down_revision: str | None = "0007_upstream"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "correlation_key",
        sa.Column("key_hash", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("account_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.PrimaryKeyConstraint("key_hash", "account_id"),
        sqlite_with_rowid=False,
    )
    from directory_sync.reconcile import file_correlation_keys

    bind = op.get_bind()
    accounts = sa.table(
        "account", sa.column("id", sa.Integer), sa.column("site", sa.String), sa.column("attributes", sa.JSON)
    )
    rows = bind.execute(sa.select(accounts.c.id, accounts.c.site, accounts.c.attributes)).all()
    file_correlation_keys(bind, [(row.id, row.site, row.attributes or {}) for row in rows])


def downgrade() -> None:
    op.drop_table("correlation_key")
