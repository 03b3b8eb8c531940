"""SAP Marketing Cloud's status pull, against PostgreSQL."""
from __future__ import annotations

import base64
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import event

from mappers import sapdi
from models import Bounce, db
from services.clock import utcnow
from services.ingest import add_delivery_report
from tests.concurrency import start_waiting_for_a_lock

PULL_PATHS = ["/status", "/hybris_sms/status", "/api/v1/notifications/get"]
WINDOW = "startTimeUTC=20180101000000&endTimeUTC=20180102000000"


def push_bounce(client, order_id: str, when: datetime, code: str = "0x4503"):
    query = (f"orderID={order_id}&date={when:%d%m}{when.year:04d}&time={when:%H%M%S}&msisdn=%2B49123456789"
             f"&status='{code} failed'")
    assert client.get("/api/v1/notifications/set?" + query).status_code == 200


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("path, allowed", [(f"/status?{WINDOW}&page=0", "GET"),
                                           ("/api/v1/notifications/get", "GET"),
                                           ("/api/v1/notifications/clear", "DELETE, GET, POST")])
def test_head_is_refused_before_it_pulls_anything(make_app, path, allowed):
    app = make_app(ENABLE_CLEAR_ENDPOINT=True)
    push_bounce(app.test_client(), "42", datetime(2018, 1, 1, 9))

    response = app.test_client().head(path)

    assert (response.status_code, response.headers["Allow"]) == (405, allowed)
    with app.app_context():  # neither marked pulled nor cleared
        assert db.session.execute(db.select(Bounce.message_id, Bounce.pulled_at)).all() == [("42", None)]


def test_response_has_the_adapter_shape(client):
    push_bounce(client, "42", datetime(2018, 1, 1, 9, 27, 54), code="0xDBF3")
    body = client.get(f"/status?{WINDOW}&page=0&sourceSystem=TestSystem1").get_json()
    assert body == {"page": "0", "lastPage": True, "status": [{
        "messageId": "42", "recipient": "+49123456789", "statusCode": "0xDBF3",
        "statusText": "failed", "type": "Temporary", "timestamp": "20180101092754"}]}


def test_bounces_with_phone_numbers_are_never_cached(client):
    push_bounce(client, "42", datetime(2018, 1, 1, 9, 27, 54))
    response = client.get(f"/status?{WINDOW}&page=0&sourceSystem=TestSystem1")
    assert response.get_json()["status"] and response.headers["Cache-Control"] == "no-store"


def test_response_bytes_are_compact_json_with_sorted_keys(client):
    push_bounce(client, "42", datetime(2018, 1, 1, 9, 27, 54), code="0xDBF3")
    response = client.get(f"/status?{WINDOW}&page=0&sourceSystem=TestSystem1")
    assert response.mimetype == "application/json"
    assert response.data == (b'{"lastPage":true,"page":"0","status":[{"messageId":"42","recipient":"+49123456789",'
                             b'"statusCode":"0xDBF3","statusText":"failed","timestamp":"20180101092754",'
                             b'"type":"Temporary"}]}\n')


def test_window_is_start_inclusive_and_end_exclusive(client):
    push_bounce(client, "at-start", datetime(2018, 1, 1, 0, 0, 0))
    push_bounce(client, "inside", datetime(2018, 1, 1, 12, 0, 0))
    push_bounce(client, "at-end", datetime(2018, 1, 2, 0, 0, 0))
    body = client.get(f"/status?{WINDOW}&page=0").get_json()
    assert [record["messageId"] for record in body["status"]] == ["at-start", "inside"]


def test_records_are_ordered_by_timestamp_then_message_id(client):
    noon = datetime(2018, 1, 1, 12, 0, 0)
    for order_id, when in [("b", noon), ("a", noon), ("c", noon - timedelta(hours=1))]:
        push_bounce(client, order_id, when)
    body = client.get(f"/status?{WINDOW}&page=0").get_json()
    assert [record["messageId"] for record in body["status"]] == ["c", "a", "b"]


def test_paging_250_records_in_pages_of_100_100_50(client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    expected = {f"m{i:03d}" for i in range(250)}
    for i in range(250):
        push_bounce(client, f"m{i:03d}", start + timedelta(seconds=i // 3))
    pages = [client.get(f"/status?{WINDOW}&page={n}").get_json() for n in range(3)]
    assert [len(p["status"]) for p in pages] == [100, 100, 50]
    assert [p["lastPage"] for p in pages] == [False, False, True]
    assert [p["page"] for p in pages] == ["0", "1", "2"]
    seen = [record["messageId"] for p in pages for record in p["status"]]
    assert len(seen) == len(set(seen)) and set(seen) == expected


def test_page_past_the_end_is_empty_and_last(client):
    push_bounce(client, "1", datetime(2018, 1, 1, 1, 0, 0))
    body = client.get(f"/status?{WINDOW}&page=7").get_json()
    assert (body["status"], body["lastPage"], body["page"]) == ([], True, "7")


def test_the_largest_page_is_answered_when_the_window_is_full_enough_to_page_on(client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(101):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    body = client.get(f"/status?{WINDOW}&page={2**31 - 2}").get_json()
    assert (body["status"], body["lastPage"], body["page"]) == ([], True, str(2**31 - 2))


def test_empty_window_is_the_last_page(client):
    body = client.get(f"/status?{WINDOW}&page=0").get_json()
    assert (body["status"], body["lastPage"]) == ([], True)


def test_get_without_parameters_returns_every_record(make_app):
    client = make_app(STATUS_PAGE_SIZE=2).test_client()
    for i in range(5):
        push_bounce(client, str(i), datetime(2019 + i, 1, 1))
    body = client.get("/api/v1/notifications/get").get_json()
    assert [record["messageId"] for record in body["status"]] == ["0", "1", "2", "3", "4"]
    assert (body["page"], body["lastPage"]) == ("0", True)


@pytest.mark.parametrize("when, timestamp", [
    (datetime(9999, 12, 31, 12, 0), "99991231120000"),
    (datetime(1969, 12, 31, 23, 0), "19691231230000"),
    (datetime(999, 1, 1, 12, 0), "09990101120000"),  # always 14 digits
])
def test_every_time_a_report_can_carry_is_served_and_rendered_in_14_digits(client, when, timestamp):
    push_bounce(client, "edge", when)
    everything = client.get("/api/v1/notifications/get").get_json()["status"]
    from_start = client.get("/status?startTimeUTC=00010101000000&page=0").get_json()["status"]
    assert [record["timestamp"] for record in everything] == [timestamp]
    assert [record["timestamp"] for record in from_start] == [timestamp]


def test_the_largest_page_sizes_the_settings_take_are_served(make_app):
    # Config takes up to 2^31 - 1; the page statement reads one record more to tell lastPage.
    client = make_app(STATUS_PAGE_SIZE=2**31 - 1, STATUS_GET_ALL_LIMIT=2**31 - 1).test_client()
    push_bounce(client, "42", datetime(2018, 1, 1, 9))
    for path in (f"/status?{WINDOW}&page=0", "/api/v1/notifications/get"):
        response = client.get(path)
        assert response.status_code == 200, response.get_json()
        assert ([r["messageId"] for r in response.get_json()["status"]], response.get_json()["lastPage"]) == (
            ["42"], True)


def test_get_without_parameters_stops_at_its_limit_and_says_it_is_not_the_last_page(make_app):
    app = make_app(STATUS_GET_ALL_LIMIT=3)
    client = app.test_client()
    for i in range(5):
        push_bounce(client, str(i), datetime(2018, 1, 1, 0, i))
    body = client.get("/api/v1/notifications/get").get_json()
    assert [record["messageId"] for record in body["status"]] == ["0", "1", "2"]
    assert body["lastPage"] is False
    assert {message for message, when in pulled_at(app).items() if when} == {"0", "1", "2"}
    # What the bounded answer left out is still served by the windowed pull,
    paged = client.get(f"/status?{WINDOW}&page=0").get_json()
    assert [record["messageId"] for record in paged["status"]] == ["0", "1", "2", "3", "4"]
    # and by the next page of the bounded answer, which goes on where it ended.
    rest = client.get("/api/v1/notifications/get?page=1").get_json()
    assert ([record["messageId"] for record in rest["status"]], rest["lastPage"]) == (["3", "4"], True)


@pytest.mark.parametrize("query, field", [
    ("startTimeUTC=2018010100000&endTimeUTC=20180102000000", "startTimeUTC"),
    ("startTimeUTC=20181301000000&endTimeUTC=20180102000000", "startTimeUTC"),
    ("startTimeUTC=20180101000000&endTimeUTC=tomorrow", "endTimeUTC"),
    ("startTimeUTC=20180102000000&endTimeUTC=20180101000000", "endTimeUTC"),
    (f"{WINDOW}&page=-1", "page"),
    (f"{WINDOW}&page=two", "page"),
    (f"{WINDOW}&page=1.5", "page"),
    (f"{WINDOW}&page={2**31 - 1}", "page"),
    (f"{WINDOW}&sourceSystem={'x' * 101}", "sourceSystem"),
    (f"{WINDOW}&sourceSystem=ERP%00", "sourceSystem"),
    ("sourceSystem=%0C7%3D%F1%99%88%A6%00%C3%9D&startTimeUTC=20260101000000", "sourceSystem"),
])
def test_bad_pull_parameters_get_400_naming_the_field(client, query, field):
    response = client.get(f"/status?{query}")
    assert response.status_code == 400
    assert response.get_json()["field"] == field


def test_parameter_names_are_read_in_any_case(client):
    push_bounce(client, "inside", datetime(2018, 1, 1, 12))
    push_bounce(client, "outside", datetime(2018, 1, 3, 12))
    body = client.get("/status?starttimeutc=20180101000000&ENDTIMEUTC=20180102000000&Page=0"
                      "&sourcesystem=TestSystem1").get_json()
    assert [record["messageId"] for record in body["status"]] == ["inside"]


def test_a_name_in_its_documented_case_wins_over_another_case(client):
    push_bounce(client, "inside", datetime(2018, 1, 1, 12))
    body = client.get("/status?endtimeutc=20180101000000&endTimeUTC=20180102000000&page=0"
                      "&startTimeUTC=20180101000000").get_json()
    assert [record["messageId"] for record in body["status"]] == ["inside"]


@pytest.mark.parametrize("path", PULL_PATHS)
def test_basic_auth_is_enforced_on_every_pull_path(make_app, path):
    client = make_app(SAP_STATUS_USERNAME="sap", SAP_STATUS_PASSWORD="s3cret").test_client()
    anonymous = client.get(f"{path}?{WINDOW}&page=0")
    wrong = client.get(f"{path}?{WINDOW}&page=0", headers=basic("sap", "guess"))
    right = client.get(f"{path}?{WINDOW}&page=0", headers=basic("sap", "s3cret"))
    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    assert (anonymous.get_json()["error"], anonymous.get_json()["field"]) == ("unauthorized", "Authorization")
    assert wrong.get_json()["field"] == "Authorization"
    assert right.status_code == 200


@pytest.mark.parametrize("path", PULL_PATHS)
def test_production_without_pull_credentials_serves_no_bounces(make_app, path):
    client = make_app(PRODUCTION=True).test_client()
    push_bounce(client, "1", datetime(2018, 1, 1, 1))
    response = client.get(f"{path}?{WINDOW}&page=0")
    assert response.status_code == 503
    assert response.get_json()["field"] == "SAP_STATUS_USERNAME"
    assert "status" not in response.get_json()


def test_outside_production_the_pull_is_open_without_credentials(client):
    push_bounce(client, "1", datetime(2018, 1, 1, 1))
    assert len(client.get(f"/status?{WINDOW}&page=0").get_json()["status"]) == 1


def test_vendor_push_stays_open_when_pull_credentials_are_set(make_app):
    client = make_app(SAP_STATUS_USERNAME="sap", SAP_STATUS_PASSWORD="s3cret").test_client()
    push_bounce(client, "1", datetime(2018, 1, 1, 1))


def test_clear_endpoint_is_off_by_default(app, client):
    push_bounce(client, "1", datetime(2018, 1, 1, 1))
    assert client.get("/api/v1/notifications/clear").status_code == 404
    with app.app_context():
        assert db.session.scalars(db.select(Bounce)).one().message_id == "1"


def test_clear_endpoint_deletes_everything_when_enabled(make_app):
    app = make_app(ENABLE_CLEAR_ENDPOINT=True)
    client = app.test_client()
    push_bounce(client, "1", datetime(2018, 1, 1, 1))
    assert client.get("/api/v1/notifications/clear").status_code == 200
    assert client.get(f"/status?{WINDOW}").get_json()["status"] == []


def test_bounces_arriving_while_sap_pages_are_neither_duplicated_nor_lost(client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(250):
        push_bounce(client, f"old{i:03d}", start + timedelta(minutes=i))
    first_sequence = []
    for page in range(10):
        body = client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1").get_json()
        first_sequence += [r["messageId"] for r in body["status"]]
        # New bounces land before, inside and after the pages already served.
        for j, minute in enumerate((0, 120, 240)):
            push_bounce(client, f"new{page}-{j}", start + timedelta(minutes=minute, seconds=30))
        if body["lastPage"]:
            break
    assert sorted(first_sequence) == sorted(f"old{i:03d}" for i in range(250))
    assert len(first_sequence) == len(set(first_sequence))
    second_sequence = []
    for page in range(10):
        body = client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1").get_json()
        second_sequence += [r["messageId"] for r in body["status"]]
        if body["lastPage"]:
            break
    arrived = {m for m in second_sequence if m.startswith("new")}
    assert len(arrived) == 3 * (len(first_sequence) // 100 + 1)
    assert len(second_sequence) == len(set(second_sequence)) == 250 + len(arrived)


def test_a_page_asked_for_without_its_predecessor_is_still_right(client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(250):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    page_two = client.get(f"/status?{WINDOW}&page=2").get_json()
    assert [r["messageId"] for r in page_two["status"]] == [f"m{i:03d}" for i in range(200, 250)]
    assert page_two["lastPage"] is True


def page_after_a_restart(client) -> dict:
    """Page 0..2 of one sequence, bounces late in the window, page 0 again and then page 2 straight away."""
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(250):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    for page in range(3):
        client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1")
    for i in range(60):
        push_bounce(client, f"z{i:03d}", start + timedelta(hours=20, minutes=i))
    assert client.get(f"/status?{WINDOW}&page=0&sourceSystem=SAP1").get_json()["lastPage"] is False
    return client.get(f"/status?{WINDOW}&page=2&sourceSystem=SAP1").get_json()


def test_a_new_page_0_sets_aside_the_positions_of_an_earlier_snapshot(client):
    page_two = page_after_a_restart(client)
    assert [r["messageId"] for r in page_two["status"]] == (
        [f"m{i:03d}" for i in range(200, 250)] + [f"z{i:03d}" for i in range(50)])
    assert page_two["lastPage"] is False


def pulled_at(app) -> dict[str, datetime | None]:
    with app.app_context():
        return dict(db.session.execute(db.select(Bounce.message_id, Bounce.pulled_at)).all())


def test_served_records_and_only_those_are_marked_pulled_once(app, client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(150):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    client.get(f"/status?{WINDOW}&page=0")
    first = pulled_at(app)
    assert {m for m, when in first.items() if when} == {f"m{i:03d}" for i in range(100)}
    client.get(f"/status?{WINDOW}&page=0")
    client.get(f"/status?{WINDOW}&page=1")
    again = pulled_at(app)
    assert all(again.values())
    assert {m: again[m] for m in first if first[m]} == {m: when for m, when in first.items() if when}


def test_a_page_is_one_statement_on_postgresql(app, client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(250):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    client.get(f"/status?{WINDOW}&page=0&sourceSystem=SAP1")  # prepares the statement on the connection
    with app.app_context():
        engine = db.engine
    sent = []
    listener = lambda conn, cursor, statement, *args: sent.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        pages = [client.get(f"/status?{WINDOW}&page={n}&sourceSystem=SAP1").get_json() for n in range(3)]
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert [len(page["status"]) for page in pages] == [100, 100, 50]
    assert len(sent) == 3 and all(statement.startswith("EXECUTE ") for statement in sent)


def test_a_changed_page_size_pages_correctly(make_app):
    client = make_app(STATUS_PAGE_SIZE=100).test_client()
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(120):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    assert len(client.get(f"/status?{WINDOW}&page=0").get_json()["status"]) == 100
    small = make_app(STATUS_PAGE_SIZE=50).test_client()
    pages = [small.get(f"/status?{WINDOW}&page={n}&sourceSystem=small").get_json() for n in range(3)]
    assert [len(page["status"]) for page in pages] == [50, 50, 20]
    assert [r["messageId"] for page in pages for r in page["status"]] == [f"m{i:03d}" for i in range(120)]


def test_page_0_marks_pulled_only_the_version_it_served(make_app):
    # A report of "a" has taken its raw event id but not committed when page 0 takes its snapshot,
    # and page 0's marking waits for it. The version it wrote was not served: it stays SAP's to pull.
    app = make_app(STATUS_PAGE_SIZE=2)
    client = app.test_client()
    for name, hour in (("a", 1), ("b", 2), ("c", 3)):
        push_bounce(client, name, datetime(2018, 1, 1, hour))
    written, may_commit = threading.Event(), threading.Event()

    def later_report_of_a() -> None:
        """Write a later bounce of "a" and commit only when told to."""
        with app.app_context():
            params = {"orderID": "a", "date": "01012018", "time": "050000", "msisdn": "+49123456789",
                      "status": "0x4504 failed again"}
            add_delivery_report("sapdi", sapdi.map_delivery_report(params, utcnow()), params)
            written.set()
            may_commit.wait(10)
            db.session.commit()

    writer = threading.Thread(target=later_report_of_a)
    writer.start()
    assert written.wait(10)
    push_bounce(client, "d", datetime(2018, 1, 1, 4))  # a later raw event id commits first
    pages = []
    with app.app_context():
        page_0 = start_waiting_for_a_lock(
            lambda: pages.append(app.test_client().get(f"/status?{WINDOW}&page=0&sourceSystem=S").get_json()))
    may_commit.set()
    writer.join()
    page_0.join()
    assert [(r["messageId"], r["timestamp"]) for r in pages[0]["status"]] == [("a", "20180101010000"),
                                                                            ("b", "20180101020000")]
    with app.app_context():
        a = db.session.scalars(db.select(Bounce).where(Bounce.message_id == "a")).one()
        assert (a.status_code, a.pulled_at) == ("0x4504", None)
    assert pulled_at(app)["b"] is not None


def rows_the_page_scan_read(app, page: int) -> int:
    """Serve `page` of the window through the page statement under EXPLAIN ANALYZE; return the bounces it read."""
    from services.bounces import PAGE_SQL

    with app.app_context(), db.engine.connect() as connection:
        # A few hundred rows: planned as at a million, where only an index scan makes sense.
        connection.exec_driver_sql("SET enable_seqscan = off; SET enable_bitmapscan = off")
        connection.exec_driver_sql(PAGE_SQL.format(name="probe_page", size=100, limit=101))
        plan = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, TIMING OFF, COSTS OFF) EXECUTE probe_page (%s, %s, %s, %s, %s)",
            (datetime(2018, 1, 1), datetime(2018, 1, 2), "SAP1", page, utcnow())).scalars().all()
        connection.commit()
        connection.invalidate()  # not back to the pool with the planner setting and the statement
    scan = next(line for line in plan if "Index Scan using ix_bounces_window on bounces " in line)
    return int(scan.split("actual rows=")[1].split()[0])


def test_page_0_asked_again_with_nothing_new_keeps_the_later_pages_positions(app, client):
    start = datetime(2018, 1, 1, 0, 0, 0)
    for i in range(450):
        push_bounce(client, f"m{i:03d}", start + timedelta(minutes=i))
    for page in range(5):
        client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1")
    client.get(f"/status?{WINDOW}&page=0&sourceSystem=SAP1")
    # Page 4 starts where the first sequence found it: one page (and one row to see if more
    # follow) is read, not the four pages before it.
    assert rows_the_page_scan_read(app, 4) <= 101
    push_bounce(client, "late", start + timedelta(hours=20))
    client.get(f"/status?{WINDOW}&page=0&sourceSystem=SAP1")
    # A new snapshot: the old positions are set aside, and page 4 is counted from where the new
    # sequence's page 1 starts.
    assert rows_the_page_scan_read(app, 4) == 3 * 100 + 51


def page_3_after_the_page_size_changed(walk_client, smaller_client) -> list[str]:
    """Walk pages 0-4 at 100 a page, then ask page 0 and page 3 at 50 a page; return page 3's ids."""
    start = datetime(2018, 1, 1)
    for i in range(450):
        push_bounce(walk_client, f"m{i:03d}", start + timedelta(minutes=i))
    for page in range(5):
        walk_client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1")
    smaller_client.get(f"/status?{WINDOW}&page=0&sourceSystem=SAP1")
    page_3 = smaller_client.get(f"/status?{WINDOW}&page=3&sourceSystem=SAP1").get_json()
    return [r["messageId"] for r in page_3["status"]]


def pages_alternating_between_page_sizes(larger_client, smaller_client) -> tuple[list[str], list[bool]]:
    """Store 250 bounces, then walk one sequence at 100, 50, 100, 50 a page; return the ids served and lastPage."""
    start = datetime(2018, 1, 1)
    for i in range(250):
        push_bounce(larger_client, f"m{i:03d}", start + timedelta(minutes=i))
    served, last = [], []
    for page, client in enumerate([larger_client, smaller_client, larger_client, smaller_client]):
        body = client.get(f"/status?{WINDOW}&page={page}&sourceSystem=SAP1").get_json()
        served += [r["messageId"] for r in body["status"]]
        last.append(body["lastPage"])
    return served, last


def test_a_sequence_keeps_its_page_size_across_instances_that_differ(make_app):
    # A rolling deploy that changes STATUS_PAGE_SIZE, SAP's requests alternating between instances.
    larger, smaller = make_app(STATUS_PAGE_SIZE=100), make_app(STATUS_PAGE_SIZE=50)

    served, last = pages_alternating_between_page_sizes(larger.test_client(), smaller.test_client())

    assert served == [f"m{i:03d}" for i in range(250)]  # neither lost nor served twice
    assert last == [False, False, True, True]


def test_positions_found_at_another_page_size_are_not_used(make_app):
    walk, smaller = make_app(STATUS_PAGE_SIZE=100), make_app(STATUS_PAGE_SIZE=50)
    ids = page_3_after_the_page_size_changed(walk.test_client(), smaller.test_client())
    assert ids == [f"m{i:03d}" for i in range(150, 200)]
