"""The open-items index follows the order claims read in: write order (id), not event time

Claims now take a message's reports in the order they changed its state, the outbox id. On the
old index (client_id, kind, event_at, id) an id-ordered claim walked the primary key through
every older row, done rows kept for RETENTION_DAYS included (250 ms a claim at a million).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01

"""
import sqlalchemy as sa
from alembic import op

from migrations.online_index import create_index_online, drop_index_online, rename_index


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

OPEN_ITEMS = "state IN ('pending', 'leased')"


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        op.drop_index('ix_outbox_open', table_name='outbox')
        create_index_online('ix_outbox_open', 'outbox', ['client_id', 'kind', 'id'], OPEN_ITEMS)
        return
    # The new index is built beside the old one, so receipts go on being written and claims keep
    # an index throughout; a retry after a cut-short attempt finds each step redone or done.
    create_index_online('ix_outbox_open_by_id', 'outbox', ['client_id', 'kind', 'id'], OPEN_ITEMS)
    drop_index_online('ix_outbox_open', 'outbox')
    rename_index('ix_outbox_open_by_id', 'ix_outbox_open')


def downgrade():
    with op.batch_alter_table('outbox') as batch_op:
        batch_op.drop_index('ix_outbox_open')
        batch_op.create_index('ix_outbox_open', ['client_id', 'kind', 'event_at', 'id'], unique=False,
                              postgresql_where=sa.text(OPEN_ITEMS), sqlite_where=sa.text(OPEN_ITEMS))
