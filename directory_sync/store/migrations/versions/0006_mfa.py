"""second factors and levels of assurance: TOTP and WebAuthn credentials, recovery codes, acr

Written by hand for the tables and columns sso_gateway/models.py added (MfaCredential, RecoveryCode,
MfaChallenge; `acr` of sessions and grants; a client's minimum level).

Revision ID: 0006_mfa
Revises: 0005
Create Date: 2026-11-23 15:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006_mfa"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_mfa_credential",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("person_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("amr", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("kek_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=True),
        sa.Column("credential_id", sqlmodel.sql.sqltypes.AutoString(length=1400), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("sign_count", sa.Integer(), nullable=False),
        sa.Column("transports", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("credential_id"),
    )
    op.create_index(
        "ix_gateway_mfa_credential_person_id", "gateway_mfa_credential", ["person_id"], unique=False
    )

    op.create_table(
        "gateway_recovery_code",
        sa.Column("code_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("person_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["person_id"], ["person.id"]),
        sa.PrimaryKeyConstraint("code_hash"),
    )
    op.create_index(
        "ix_gateway_recovery_code_person_id", "gateway_recovery_code", ["person_id"], unique=False
    )

    op.create_table(
        "gateway_mfa_challenge",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("sid", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("person_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("challenge", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gateway_mfa_challenge_sid", "gateway_mfa_challenge", ["sid"], unique=False)

    with op.batch_alter_table("gateway_session") as batch:
        batch.add_column(sa.Column("acr", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
    with op.batch_alter_table("gateway_grant") as batch:
        batch.add_column(sa.Column("acr", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))
    with op.batch_alter_table("gateway_client") as batch:
        batch.add_column(sa.Column("min_acr", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateway_client") as batch:
        batch.drop_column("min_acr")
    with op.batch_alter_table("gateway_grant") as batch:
        batch.drop_column("acr")
    with op.batch_alter_table("gateway_session") as batch:
        batch.drop_column("acr")
    op.drop_index("ix_gateway_mfa_challenge_sid", table_name="gateway_mfa_challenge")
    op.drop_table("gateway_mfa_challenge")
    op.drop_index("ix_gateway_recovery_code_person_id", table_name="gateway_recovery_code")
    op.drop_table("gateway_recovery_code")
    op.drop_index("ix_gateway_mfa_credential_person_id", table_name="gateway_mfa_credential")
    op.drop_table("gateway_mfa_credential")
