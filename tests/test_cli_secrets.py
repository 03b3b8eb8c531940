"""`flask reseal-secrets`: re-encrypting client secrets with the newest CONFIG_ENCRYPTION_KEY."""
from __future__ import annotations

import uuid

from cryptography.fernet import Fernet

from models import Client, db
from schemas.client_config import load_client_config
from services.clients import callback_signing_keys, client_config, save_client
from tests.records import insert_client

CLIENT_ID = uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
OLD_ACCOUNT = {"vendor": "twilio", "accountSid": "AC" + "0" * 32, "authToken": "old-account-token"}
NEW_ACCOUNT = {"vendor": "twilio", "accountSid": "AC" + "1" * 32, "authToken": "new-account-token"}


def new_key() -> str:
    """Return a fresh Fernet key."""
    return Fernet.generate_key().decode()


def configure(app, fields: dict[str, str]) -> None:
    """Save the client's configuration as a PUT would."""
    with app.app_context():
        save_client(CLIENT_ID, load_client_config({"customFieldValues": fields}))


def reseal(app):
    """Invoke `flask reseal-secrets` in the app's context, as the flask command runs it, and return the result."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=["reseal-secrets"])


def test_resealed_secrets_open_once_the_old_key_is_dropped(make_app):
    old, new = new_key(), new_key()
    before = make_app(CONFIG_ENCRYPTION_KEY=old)
    configure(before, OLD_ACCOUNT)
    configure(before, NEW_ACCOUNT)  # the old account's token is kept, sealed, as a former secret

    result = reseal(make_app(CONFIG_ENCRYPTION_KEY=f"{new},{old}"))
    assert result.exit_code == 0, result.output
    assert "resealed 1 client(s)" in result.output

    with make_app(CONFIG_ENCRYPTION_KEY=new).app_context():
        client = db.session.get(Client, CLIENT_ID)
        assert client_config(client).fields["authToken"] == "new-account-token"
        assert callback_signing_keys(client, "twilio") == ["new-account-token", "old-account-token"]


def test_a_client_no_key_opens_is_named_and_left_as_it_is(make_app):
    app = make_app(CONFIG_ENCRYPTION_KEY=new_key())
    with app.app_context():
        insert_client(CLIENT_ID)  # its secrets were sealed with a key no longer configured

    result = reseal(app)

    assert result.exit_code == 1
    assert str(CLIENT_ID) in result.output and "cannot be read" in result.output
    with app.app_context():
        assert db.session.get(Client, CLIENT_ID).secrets == "never opened"
