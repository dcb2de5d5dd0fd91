"""correlation: territorial login, provenance, primary affiliation, review cases, decisions, audit

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("person") as batch:
        batch.add_column(sa.Column("login", sa.String(64), nullable=True))
        batch.add_column(sa.Column("birth_name", sa.String(), nullable=True))
        batch.add_column(sa.Column("birth_date", sa.String(10), nullable=True))
        batch.add_column(sa.Column("adeli", sa.String(9), nullable=True))
        batch.add_column(sa.Column("provenance", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("merged_into", sa.String(32), nullable=True))
        batch.add_column(sa.Column("deprovisioned_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_person_login", ["login"])
    with op.batch_alter_table("account") as batch:
        batch.add_column(sa.Column("linked_by", sa.String(80), nullable=False, server_default="created"))
    with op.batch_alter_table("affiliation") as batch:
        batch.add_column(sa.Column("primary", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("syncrun") as batch:
        batch.add_column(sa.Column("reviews", sa.Integer(), nullable=False, server_default="0"))

    op.create_table(
        "reviewcase",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False, index=True),
        sa.Column("anchor", sa.String(255), nullable=False),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("account.id"), nullable=False, index=True),
        sa.Column("person_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(), nullable=True),
        sa.Column("decision_note", sa.String(), nullable=True),
    )
    op.create_table(
        "linkdecision",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("anchor", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("person_id", sa.String(32), nullable=True),
        sa.Column("decided_by", sa.String(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site", "anchor", "kind", "person_id", name="uq_linkdecision"),
    )
    op.create_table(
        "auditevent",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("person_id", sa.String(32), nullable=True),
        sa.Column("site", sa.String(64), nullable=True),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
    )
    op.create_index("ix_auditevent_person_at", "auditevent", ["person_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_auditevent_person_at", "auditevent")
    op.drop_table("auditevent")
    op.drop_table("linkdecision")
    op.drop_table("reviewcase")
    with op.batch_alter_table("syncrun") as batch:
        batch.drop_column("reviews")
    with op.batch_alter_table("affiliation") as batch:
        batch.drop_column("primary")
    with op.batch_alter_table("account") as batch:
        batch.drop_column("linked_by")
    with op.batch_alter_table("person") as batch:
        batch.drop_constraint("uq_person_login", type_="unique")
        for column in (
            "deprovisioned_at",
            "merged_into",
            "provenance",
            "adeli",
            "birth_date",
            "birth_name",
            "login",
        ):
            batch.drop_column(column)
