"""A bound PostgreSQL's TLS settings: the service verifies the server with the binding's CA certificate."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from config import load_config
from errors import StartupError
from tests.pg import ThrowawayPostgres

REPO = Path(__file__).resolve().parents[1]


def _certificate(subject: str, issuer_key, public_key, issuer: str, is_ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _new_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _certificate(name, key, key.public_key(), name, is_ca=True)


@pytest.fixture(scope="module")
def tls_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Return the CA that signed the TLS server's certificate."""
    return _new_ca("test database CA")


@pytest.fixture(scope="module")
def tls_postgres(tls_ca) -> Iterator[ThrowawayPostgres]:
    """Start a PostgreSQL that offers TLS with a certificate for 127.0.0.1 signed by tls_ca."""
    ca_key, ca_certificate = tls_ca
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_certificate = _certificate("127.0.0.1", ca_key, server_key.public_key(), "test database CA", False)
    server = ThrowawayPostgres()
    key_file = server.own_file("server.key", server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    certificate_file = server.own_file("server.crt", server_certificate.public_bytes(serialization.Encoding.PEM))
    server.settings.update(ssl="on", ssl_cert_file=str(certificate_file), ssl_key_file=str(key_file))
    yield server.start()
    server.stop()


def _binding(server: ThrowawayPostgres, **credentials) -> dict[str, str]:
    vcap = {"postgresql-db": [{"name": "sms-status-db", "tags": ["postgresql"], "credentials": {
        "hostname": "127.0.0.1", "port": str(server.port), "dbname": "postgres", "username": "test",
        "password": "unused", **credentials}}]}
    return {"VCAP_SERVICES": json.dumps(vcap)}


def _connection_uses_tls(database_url: str) -> bool:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
    finally:
        engine.dispose()


def test_binding_root_certificate_makes_the_service_verify_the_server(tls_postgres, tls_ca):
    environ = _binding(tls_postgres, sslrootcert=_pem(tls_ca[1]))
    database_url = load_config(environ)["SQLALCHEMY_DATABASE_URI"]
    query = parse_qs(urlsplit(database_url).query)
    assert query["sslmode"] == ["verify-full"]  # the certificate names 127.0.0.1
    assert Path(query["sslrootcert"][0]).read_text() == _pem(tls_ca[1])
    assert _connection_uses_tls(database_url) is True


def test_server_with_a_certificate_of_another_ca_is_refused(tls_postgres):
    database_url = load_config(_binding(tls_postgres, sslrootcert=_pem(_new_ca("someone else")[1])))[
        "SQLALCHEMY_DATABASE_URI"]
    with pytest.raises(OperationalError, match="certificate verify failed"):
        _connection_uses_tls(database_url)


def test_binding_sslmode_is_kept_beside_its_root_certificate(tls_postgres, tls_ca):
    environ = _binding(tls_postgres, sslrootcert=_pem(tls_ca[1]), sslmode="verify-ca")
    database_url = load_config(environ)["SQLALCHEMY_DATABASE_URI"]
    assert parse_qs(urlsplit(database_url).query)["sslmode"] == ["verify-ca"]
    assert _connection_uses_tls(database_url) is True


def test_server_whose_certificate_names_another_host_is_refused(tls_postgres, tls_ca):
    environ = _binding(tls_postgres, hostname="localhost", sslrootcert=_pem(tls_ca[1]))
    database_url = load_config(environ)["SQLALCHEMY_DATABASE_URI"]
    with pytest.raises(OperationalError, match="does not match host name"):
        _connection_uses_tls(database_url)


def test_binding_uri_gets_the_root_certificate_unless_it_names_one(tls_postgres, tls_ca):
    uri = f"postgres://test:unused@127.0.0.1:{tls_postgres.port}/postgres"
    database_url = load_config(_binding(tls_postgres, uri=uri, sslrootcert=_pem(tls_ca[1])))[
        "SQLALCHEMY_DATABASE_URI"]
    assert parse_qs(urlsplit(database_url).query)["sslmode"] == ["verify-full"]
    assert _connection_uses_tls(database_url) is True
    own = load_config(_binding(tls_postgres, uri=uri + "?sslrootcert=/etc/own.pem",
                               sslrootcert=_pem(tls_ca[1])))["SQLALCHEMY_DATABASE_URI"]
    assert parse_qs(urlsplit(own).query) == {"sslrootcert": ["/etc/own.pem"], "sslmode": ["verify-full"]}


def test_a_file_left_under_the_certificate_name_is_replaced_not_trusted(tls_postgres, tls_ca):
    environ = _binding(tls_postgres, sslrootcert=_pem(tls_ca[1]))
    path = Path(parse_qs(urlsplit(load_config(environ)["SQLALCHEMY_DATABASE_URI"]).query)["sslrootcert"][0])
    path.write_text(_pem(_new_ca("planted")[1]))

    database_url = load_config(environ)["SQLALCHEMY_DATABASE_URI"]

    assert path.read_text() == _pem(tls_ca[1])
    assert _connection_uses_tls(database_url) is True


def test_binding_root_certificate_that_is_not_pem_stops_start_up(tls_postgres):
    with pytest.raises(StartupError, match="sslrootcert is not a PEM certificate"):
        load_config(_binding(tls_postgres, sslrootcert="/etc/ssl/certs/ca.pem"))


def test_migration_step_names_a_certificate_that_does_not_verify(tls_postgres):
    environ = {**os.environ, **_binding(tls_postgres, sslrootcert=_pem(_new_ca("someone else")[1]))}
    environ.pop("DATABASE_URL", None)
    step = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "app", "db-upgrade-locked"],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=60)

    assert step.returncode != 0
    last_line = step.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Error: database unreachable: ") and "certificate verify failed" in last_line
    assert "Traceback" not in step.stderr
