"""The dashboard's figures and message search probe indexes instead of reading retained rows

GET /dashboard took about a second on 3M done outbox rows and 1M bounces, growing with retention:
the last successful forward and the waiting bounces were read from whole tables, and a message
search read message_states and outbound_messages whole. All four indexes are partial: a receipt's
new outbox item (pending), a bounce SAP has pulled, a state of SAP traffic (no Emarsys id) and a
queued campaign message (no vendor id yet) cost no entry. The search's other lookups now name the
stored vendors or clients and so use the existing composite indexes (services/dashboard.py).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

"""
from alembic import op

from migrations.online_index import create_index_online


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# (table, index, column, partial index condition); the models declare the same.
INDEXES = [
    ('outbox', 'ix_outbox_sent', 'sent_at', "state = 'done'"),
    # The types are named so that only the dashboard's count can use it (see models.messages).
    ('bounces', 'ix_bounces_waiting', 'type', "pulled_at IS NULL AND type IN ('Permanent', 'Temporary')"),
    ('message_states', 'ix_message_states_emarsys_message_id', 'emarsys_message_id',
     'emarsys_message_id IS NOT NULL'),
    ('outbound_messages', 'ix_outbound_messages_vendor_message_id', 'vendor_message_id',
     'vendor_message_id IS NOT NULL'),
]


def upgrade():
    # Built concurrently: the tables take vendors' receipts throughout a deploy.
    for table, name, column, condition in INDEXES:
        create_index_online(name, table, [column], condition)


def downgrade():
    for table, name, _column, _condition in reversed(INDEXES):
        op.drop_index(name, table_name=table)
