"""export to Entra ID: export state per person, managed groups and memberships, export runs

Written by hand for the tables appended to store/models.py by directory_sync.azure (its own branch
off 0001).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STR = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "azure_export_state",
        sa.Column("person_id", _STR(length=32), nullable=False),
        sa.Column("object_id", _STR(length=64), nullable=True),
        sa.Column("upn", _STR(length=255), nullable=True),
        sa.Column("employee_id", _STR(length=16), nullable=False),
        sa.Column("status", _STR(length=16), nullable=False),
        sa.Column("origin", _STR(length=16), nullable=False),
        sa.Column("sent", sa.JSON(), nullable=False),
        sa.Column("sent_hash", _STR(length=64), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=True),
        sa.Column("error", _STR(), nullable=True),
        sa.Column("exported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("person_id"),
    )
    op.create_index("ix_azure_export_state_object_id", "azure_export_state", ["object_id"], unique=False)
    op.create_index("ix_azure_export_state_employee_id", "azure_export_state", ["employee_id"], unique=False)

    op.create_table(
        "azure_export_group",
        sa.Column("key", _STR(length=128), nullable=False),
        sa.Column("object_id", _STR(length=64), nullable=True),
        sa.Column("display_name", _STR(), nullable=False),
        sa.Column("mail_nickname", _STR(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )

    op.create_table(
        "azure_export_membership",
        sa.Column("group_key", _STR(length=128), nullable=False),
        sa.Column("member_id", _STR(length=64), nullable=False),
        sa.PrimaryKeyConstraint("group_key", "member_id"),
    )
    op.create_index(
        "ix_azure_export_membership_member_id", "azure_export_membership", ["member_id"], unique=False
    )

    op.create_table(
        "azure_export_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mode", _STR(length=16), nullable=False),
        sa.Column("status", _STR(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in (
                "created",
                "updated",
                "disabled",
                "enabled",
                "restored",
                "deleted",
                "adopted",
                "rejected",
                "groups_created",
                "members_added",
                "members_removed",
                "requests",
                "writes",
                "throttled",
                "retries",
            )
        ),
        sa.Column("write_rate", sa.Float(), nullable=True),
        sa.Column("error", _STR(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_azure_export_run_started_at", "azure_export_run", ["started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_azure_export_run_started_at", table_name="azure_export_run")
    op.drop_table("azure_export_run")
    op.drop_index("ix_azure_export_membership_member_id", table_name="azure_export_membership")
    op.drop_table("azure_export_membership")
    op.drop_table("azure_export_group")
    op.drop_index("ix_azure_export_state_employee_id", table_name="azure_export_state")
    op.drop_index("ix_azure_export_state_object_id", table_name="azure_export_state")
    op.drop_table("azure_export_state")
