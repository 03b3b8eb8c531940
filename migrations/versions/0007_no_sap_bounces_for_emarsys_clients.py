"""SAP is served only the bounces of its own traffic: drop those of Emarsys clients' messages

Before this revision a bounce was also stored for a message an Emarsys client sent, and every pull
of its window served it to SAP Marketing Cloud. Emarsys hears of those outcomes through the outbox.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    # A subquery, not DELETE ... USING, so that SQLite runs it too.
    op.execute("DELETE FROM bounces WHERE message_state_id IN "
               "(SELECT id FROM message_states WHERE client_id IS NOT NULL)")


def downgrade():
    pass  # Deleted copies are not restored: the message states and raw events still hold them.
