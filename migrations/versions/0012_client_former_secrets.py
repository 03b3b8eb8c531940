"""A client keeps the signing keys of accounts it moved away from

A client moved off Twilio (to Genesys, or to another Twilio account) keeps its old callback URL for
the late reports of messages sent through it, but the old authToken was gone, so those requests
could no longer be checked against X-Twilio-Signature. The old account's signing secrets are now
kept, encrypted like every secret. Clients moved before this revision have none: their old Twilio
URL refuses every request (403) rather than take unsigned ones.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01

"""
import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('clients') as batch_op:
        batch_op.add_column(sa.Column('former_secrets', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('clients') as batch_op:
        batch_op.drop_column('former_secrets')
