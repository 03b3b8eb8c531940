import pytest
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from errors import is_database_unavailable
from models import db

WINDOW = "startTimeUTC=20180101000000&endTimeUTC=20180102000000"


@pytest.mark.parametrize("error, unavailable", [
    (PoolTimeoutError("QueuePool limit reached"), True),
    (OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
    (InterfaceError("SELECT 1", {}, Exception("connection already closed")), True),
    (DBAPIError("SELECT 1", {}, Exception("lost"), connection_invalidated=True), True),
    (DataError("INSERT", {}, Exception("value too long")), False),
    (IntegrityError("INSERT", {}, Exception("duplicate key")), False),
    (ValueError("a bug"), False),
])
def test_only_transient_database_errors_mean_retry_later(error, unavailable):
    assert is_database_unavailable(error) is unavailable


def test_every_pooled_connection_busy_is_a_503_not_a_500(make_app):
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2})
    with app.app_context(), db.engine.connect():
        response = app.test_client().get(f"/status?{WINDOW}")
    assert response.status_code == 503
    assert response.get_json() == {"error": "unavailable", "message": "database unavailable, retry later"}


@pytest.mark.parametrize("method, path, body, expected", [
    ("POST", "/api/v1/notifications/set", None,
     {"error": "method_not_allowed", "field": "method", "message": "POST is not allowed here; use GET"}),
    ("POST", "/vendors/genesys/delivery-reports", b"a=" + b"x" * 70_000,
     {"error": "request_entity_too_large", "field": "body",
      "message": "the body is larger than the 65536 bytes this URL takes"}),
    ("GET", "/no-such-route", None, {"error": "not_found", "field": "path"}),
])
def test_werkzeugs_own_errors_name_what_is_at_fault(client, method, path, body, expected):
    response = client.open(path, method=method, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (404, 405, 413)
    assert {key: response.get_json()[key] for key in expected} == expected


def test_too_many_form_parts_is_not_called_a_body_too_large(make_app):
    client = make_app(ADMIN_USERNAME="ops", ADMIN_PASSWORD="pw").test_client()
    parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="p"\r\n\r\nx\r\n' for _ in range(1001))
    response = client.post("/dashboard/replay", auth=("ops", "pw"), data=parts + b"--b--\r\n",
                           content_type="multipart/form-data; boundary=b", headers={"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 413
    assert "bytes this URL takes" not in response.get_json()["message"]
