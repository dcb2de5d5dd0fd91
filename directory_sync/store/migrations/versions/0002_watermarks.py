"""delta sync: per-site watermarks; account facts, affiliation roles, why a run was full or delta

Written by hand for directory_sync.delta and the Active Directory connector (its own branch off 0001):
the `sync_watermark` table, `account.facts` (AD account state kept as facts), `affiliation.roles`
(territorial roles from group membership) and `syncrun.mode_reason`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STR = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "sync_watermark",
        sa.Column("site", _STR(length=64), nullable=False),
        sa.Column("kind", _STR(length=16), nullable=False),
        sa.Column("source", _STR(), nullable=False),
        sa.Column("value", _STR(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("scope", _STR(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("site"),
    )
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(sa.Column("facts", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("affiliation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("roles", _STR(), nullable=True))
    with op.batch_alter_table("syncrun", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mode_reason", _STR(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("syncrun", schema=None) as batch_op:
        batch_op.drop_column("mode_reason")
    with op.batch_alter_table("affiliation", schema=None) as batch_op:
        batch_op.drop_column("roles")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("facts")
    op.drop_table("sync_watermark")
