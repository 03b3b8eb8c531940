"""Encryption at rest of client secrets: sealing, key rotation, and where keys come from."""
from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from errors import StartupError
from services.crypto import EncryptionUnavailable, SecretBox, UndecryptableSecrets, encryption_keys

SECRETS = {"password": "g3n-S3cret-pw!", "authToken": "tw1l10-S3cret-token"}


def new_key() -> str:
    """Return a fresh Fernet key."""
    return Fernet.generate_key().decode()


def test_sealed_values_open_again_and_hide_the_plaintext():
    box = SecretBox([new_key()])
    token = box.seal(SECRETS)
    assert all(secret not in token for secret in SECRETS.values())
    assert box.open(token) == SECRETS


def test_each_seal_is_different():
    box = SecretBox([new_key()])
    assert box.seal(SECRETS) != box.seal(SECRETS)


def test_rotation_new_key_first_still_opens_old_tokens():
    old, new = new_key(), new_key()
    token = SecretBox([old]).seal(SECRETS)
    rotated = SecretBox([new, old])
    assert rotated.open(token) == SECRETS
    with pytest.raises(UndecryptableSecrets):
        SecretBox([old]).open(rotated.seal(SECRETS))  # the newest key encrypts


@pytest.mark.parametrize("token", ["not-a-token", SecretBox([new_key()]).seal(SECRETS)])
def test_a_token_no_key_opens_is_undecryptable(token):
    with pytest.raises(UndecryptableSecrets) as caught:
        SecretBox([new_key()]).open(token)
    assert caught.value.status_code == 503
    assert isinstance(caught.value, EncryptionUnavailable)


def test_a_box_without_keys_is_unavailable():
    with pytest.raises(EncryptionUnavailable) as caught:
        SecretBox([])
    assert caught.value.status_code == 503


K1, K2 = new_key(), new_key()


@pytest.mark.parametrize("configured, expected", [
    (K1, [K1]),
    (f"{K1},{K2}", [K1, K2]),
    (f" {K1} , {K2} ,", [K1, K2]),
])
def test_configured_keys_are_comma_separated_newest_first(tmp_path, configured, expected):
    assert encryption_keys(configured, tmp_path, production=True) == expected
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("configured, position", [
    ("not-a-fernet-key", 1),
    (f"{K1},{K2[:-4]}", 2),
])
def test_a_malformed_key_stops_start_up_without_naming_the_key(tmp_path, configured, position):
    with pytest.raises(StartupError, match=f"^CONFIG_ENCRYPTION_KEY: key {position} is not a Fernet key") as raised:
        encryption_keys(configured, tmp_path, production=True)
    assert configured.split(",")[-1] not in str(raised.value)


def test_production_without_a_key_gets_none(tmp_path):
    assert encryption_keys(None, tmp_path, production=True) == []
    assert list(tmp_path.iterdir()) == []


def test_development_generates_one_private_key_under_instance(tmp_path):
    instance = tmp_path / "instance"
    first = encryption_keys(None, instance, production=False)
    second = encryption_keys(None, instance, production=False)
    assert first == second and len(first) == 1
    key_file = instance / "config-encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox(first).open(SecretBox(second).seal(SECRETS)) == SECRETS
