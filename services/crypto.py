"""Encryption at rest of client secrets (Fernet, from CONFIG_ENCRYPTION_KEY)."""
from __future__ import annotations

import binascii
import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from errors import ServiceError, StartupError


class EncryptionUnavailable(ServiceError):
    """No encryption key is configured, so secrets cannot be stored or read."""

    status_code = 503
    error = "encryption_key_missing"


class UndecryptableSecrets(EncryptionUnavailable):
    """Stored secrets were sealed with a key that CONFIG_ENCRYPTION_KEY no longer holds."""

    error = "secrets_undecryptable"


class SecretBox:
    """Encrypt and decrypt small JSON documents; the first key encrypts, every key decrypts."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise EncryptionUnavailable("CONFIG_ENCRYPTION_KEY is not set; client secrets cannot be stored")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def seal(self, values: dict[str, str]) -> str:
        """Return the values as one encrypted token."""
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, token: str) -> dict[str, str]:
        """Return the values of a token; raise UndecryptableSecrets when no key fits."""
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise UndecryptableSecrets("stored secrets cannot be decrypted with CONFIG_ENCRYPTION_KEY") from None

    def reseal(self, token: str) -> str:
        """Return the token encrypted anew with the first key; raise UndecryptableSecrets when no key fits."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecrets("stored secrets cannot be decrypted with CONFIG_ENCRYPTION_KEY") from None


def check_fernet_key(key: str, position: int) -> None:
    """Stop start-up on a key that is not a Fernet key, rather than fail every request that needs it."""
    try:
        Fernet(key.encode())
    except (ValueError, binascii.Error):
        # The message names the key's position, never the key.
        raise StartupError(f"CONFIG_ENCRYPTION_KEY: key {position} is not a Fernet key "
                         "(32 bytes in URL-safe base64)") from None


def encryption_keys(configured: str | None, instance_dir: Path, production: bool) -> list[str]:
    """Return the configured keys (comma-separated, newest first).

    Outside production a key is generated once under `instance/`, so `make run` works with no
    set-up; production must set CONFIG_ENCRYPTION_KEY and gets no keys (503) without it.
    """
    if configured:
        keys = [key.strip() for key in configured.split(",") if key.strip()]
        for position, key in enumerate(keys, start=1):
            check_fernet_key(key, position)
        return keys
    if production:
        return []
    key_file = instance_dir / "config-encryption.key"
    if not key_file.exists():
        instance_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(Fernet.generate_key().decode())
    return [key_file.read_text().strip()]
