"""people by status and suspension date: the grace period's deprovisioning reads only who expired

Every run ends by deprovisioning the people suspended for longer than the grace period. With an index
on the status alone, that read visited every suspended person (thousands in a GHT, as departures
accumulate over the grace period); on (status, suspended_at) it visits only those whose time is up.
The index replaces the one on status alone, which it also serves.

Revision ID: 0009_suspended_index
Revises: 0008_correlation_keys
Create Date: 2026-12-07 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009_suspended_index"
down_revision: str | None = "0008_correlation_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_person_status_suspended_at", "person", ["status", "suspended_at"])
    op.drop_index("ix_person_status", table_name="person")


def downgrade() -> None:
    op.create_index("ix_person_status", "person", ["status"])
    op.drop_index("ix_person_status_suspended_at", table_name="person")
