"""An outbound message remembers the vendor account of its last attempt

A retry after the client re-onboarded with another account of the same vendor (another Genesys
login or server, another Twilio account) went to the new account, which cannot see what the
earlier attempt created: the SMS could be sent twice. The dispatcher now compares accounts as it
compares vendors. Rows from before this revision have none; their retries compare vendors only.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

"""
import sqlalchemy as sa
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('outbound_messages') as batch_op:
        batch_op.add_column(sa.Column('vendor_account', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('outbound_messages') as batch_op:
        batch_op.drop_column('vendor_account')
