"""accounts by site and state: a delta's closure threshold counts a site's open accounts from an index

A delta that closes accounts checks them against the closure threshold, which needs the number of the
site's accounts that are not deleted (as far as the threshold needs it). On the (site, anchor) index
that count read one account row per account counted, scattered over the whole table (anchors are
random): 150 cold rows per site at the default threshold, 5% of a delta's time. On (site, state) it
reads index entries only.

Revision ID: 0010_account_state_index
Revises: 0009_suspended_index
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_account_state_index"
down_revision: str | None = "0009_suspended_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_account_site_state", "account", ["site", "state"])


def downgrade() -> None:
    op.drop_index("ix_account_site_state", table_name="account")
