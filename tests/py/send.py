"""A real Python server SDK sending to weft, changed only in its host.

The client is set up the way its documentation shows and the way a site
owner would switch an existing integration to weft: the module-level write
key and host (RudderStack calls it the data plane URL), nothing else. It
sends one message of each type the library has, then shutdown() (flush,
then join the sender thread).

    python3 send.py <rudderstack|segment> <host> <write key>

with the pinned packages on PYTHONPATH (`cargo xtask test` installs them
into target/tools/python). The library's own HTTP session is observed, not
changed: every request it makes is printed as one line `request <json>`
(its URL, Content-Encoding, Authorization and the body as sent, un-gzipped)
and every answer as `response <status> <body>`. The library's version is
printed as `version <version>`. Exits 1 on an on_error call from the
library, an answer that is not 2xx, no request at all, or after 20 s.
"""

import gzip
import importlib
import json
import os
import sys
import threading

CLIENTS = {
    # module, the module-level setting that names the host
    "rudderstack": ("rudderstack.analytics", "dataPlaneUrl"),
    "segment": ("segment.analytics", "host"),
}

if len(sys.argv) != 4 or sys.argv[1] not in CLIENTS:
    print("usage: python3 send.py <rudderstack|segment> <host> <write key>", file=sys.stderr)
    sys.exit(2)
client, host, write_key = sys.argv[1:]
module, host_setting = CLIENTS[client]

problems = []
requests = 0


def give_up():
    for p in dict.fromkeys(problems):
        print(f"send.py {client}: {p}", file=sys.stderr)
    print(f"send.py {client}: gave up after 20 s (shutdown never finished)", file=sys.stderr)
    sys.stdout.flush()
    os._exit(1)


deadline = threading.Timer(20.0, give_up)
deadline.daemon = True
deadline.start()

try:
    analytics = importlib.import_module(module)
    session = importlib.import_module(module.replace(".analytics", ".analytics.request"))._session
except ImportError as e:
    print(
        f"send.py {client}: cannot import {module} ({e}): run `cargo xtask test`, "
        "which installs the pinned PyPI packages into target/tools/python",
        file=sys.stderr,
    )
    sys.exit(1)


def observe(response, *args, **kwargs):
    """A `requests` response hook on the library's session: prints what went
    out and what came back."""
    global requests
    requests += 1
    sent = response.request
    body = sent.body if isinstance(sent.body, bytes) else (sent.body or "").encode()
    encoding = sent.headers.get("Content-Encoding")
    if encoding == "gzip":
        body = gzip.decompress(body)
    wire = {
        "method": sent.method,
        "url": sent.url,
        "contentEncoding": encoding,
        "authorization": sent.headers.get("Authorization"),
        "body": json.loads(body),
    }
    print("request " + json.dumps(wire), flush=True)
    print(f"response {response.status_code} {response.text}", flush=True)
    if not 200 <= response.status_code <= 299:
        problems.append(f"{sent.method} {sent.url} answered {response.status_code}: {response.text}")


session.hooks["response"].append(observe)


def on_error(error, batch):
    problems.append(f"client error: {error!r} ({len(batch)} message(s))")


analytics.write_key = write_key
setattr(analytics, host_setting, host)
analytics.on_error = on_error
print(f"version {analytics.VERSION}", flush=True)

user_id = f"py-{client}-user-1"
anonymous_id = f"py-{client}-anon-1"
traits = {"email": "ada@example.com", "plan": "pro", "logins": 3}

if client == "segment":
    # Segment sends `traits` at the top level and keeps a given context as
    # it is: here both, with `plan` in each (the top-level value must win).
    analytics.identify(
        user_id,
        traits,
        context={"traits": {"plan": "free", "company": "Acme Corp"}},
        anonymous_id=anonymous_id,
    )
else:
    # RudderStack moves the traits into context.traits (and would replace
    # any context.traits given).
    analytics.identify(user_id, traits, anonymous_id=anonymous_id)
analytics.track(
    user_id,
    "Order Completed",
    {"orderId": "o-1001", "revenue": 42.5, "currency": "EUR", "products": [{"sku": "sku-7"}]},
)
analytics.page(
    anonymous_id=anonymous_id,
    category="Docs",
    name="Pricing",
    properties={"path": "/pricing", "url": "https://shop.example/pricing"},
)
analytics.screen(user_id, name="Home", properties={"variant": "dark"})
analytics.group(user_id, f"py-{client}-org-1", {"name": "Acme", "employees": 12})
analytics.alias(anonymous_id, user_id)

try:
    analytics.shutdown()
except Exception as e:  # noqa: BLE001 - any failure is the test's business
    problems.append(f"shutdown failed: {e!r}")
deadline.cancel()

if requests == 0:
    problems.append("the client made no HTTP request")
if problems:
    for p in dict.fromkeys(problems):
        print(f"send.py {client}: {p}", file=sys.stderr)
    sys.exit(1)
print(f"send.py {client}: {requests} request(s), all answered 2xx")
