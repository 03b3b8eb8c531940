"""Gunicorn settings every start shares (manifest, `make run`, benchmarks, drills, tests).

Gunicorn reads ./gunicorn.conf.py from its working directory, and all of them start it from the
repository root. Command-line flags override these, so none of them passes -k.
"""
import os

# Vendors push inbound SMS and delivery receipts by GET with the text in the query string. A long
# concatenated Unicode SMS (10 UCS-2 segments of 67 characters, 3 UTF-8 bytes each, 9 once
# percent-encoded) is ~6,000 bytes before the other parameters, over gunicorn's default of 4094, and
# a vendor retries a 414 forever. 8190 is gunicorn's largest bounded value; 0 (unlimited) would let
# any client make a worker buffer an arbitrarily long line. Over it, the answer is a JSON 414.
limit_request_line = 8190

# GUNICORN_THREADS picks the worker, as the manifest's --threads does the thread count: gunicorn's
# own sync-to-gthread switch would use its stock worker, whose rejections are HTML pages.
_threads = (os.environ.get("GUNICORN_THREADS") or "").strip() or "1"
if not (_threads.isascii() and _threads.isdigit()) or int(_threads) < 1:
    # SystemExit, not ValueError: gunicorn prints any Exception of this file with its traceback.
    raise SystemExit(f"GUNICORN_THREADS must be a whole number of at least 1, not {_threads!r}")
threads = int(_threads)
worker_class = ("gunicorn_workers.ThreadJsonWorker" if threads > 1
                else "gunicorn_workers.SyncJsonWorker")

# The access log names the route template, never the raw path: query strings carry phone numbers
# and texts, client callback paths carry tokens (logging_setup.py puts the template in the environ).
# Its request id is the app log's (X-Vcap-Request-Id, else X-Request-Id, else generated), from the environ.
access_log_format = '%(h)s "%(m)s %({sms_status.route}e)s" %(s)s %(b)s %(M)sms %({sms_status.request_id}e)s'

# gunicorn's own lines (start, stop, worker timeouts, the rejections of gunicorn_workers.py) are JSON
# like the app's; the access line above stays gunicorn's plain text.
logger_class = "gunicorn_workers.JsonErrorLogger"
