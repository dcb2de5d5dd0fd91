"""upstream identity providers: pending upstream sign-ins (state digests) and upstream identity links

Written by hand for sso_gateway/models.py's UpstreamState and UpstreamIdentity (sso_gateway/upstream.py).

Revision ID: 0007_upstream
Revises: 0006_mfa
Create Date: 2026-11-23 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007_upstream"
down_revision: str | None = "0006_mfa"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_upstream_state",
        sa.Column("state_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("pending_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("browser_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("state_hash"),
    )
    op.create_index(
        "ix_gateway_upstream_state_expires_at", "gateway_upstream_state", ["expires_at"], unique=False
    )
    op.create_table(
        "gateway_upstream_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("person_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("linked_by", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("external", sa.Boolean(), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "subject", name="uq_gateway_upstream_identity"),
    )
    op.create_index(
        "ix_gateway_upstream_identity_person_id", "gateway_upstream_identity", ["person_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_gateway_upstream_identity_person_id", table_name="gateway_upstream_identity")
    op.drop_table("gateway_upstream_identity")
    op.drop_index("ix_gateway_upstream_state_expires_at", table_name="gateway_upstream_state")
    op.drop_table("gateway_upstream_state")
