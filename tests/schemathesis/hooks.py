"""What Herald's OpenAPI document cannot state in JSON Schema.

The document describes each field exactly; these hooks drop the generated
requests that break a rule spanning two fields (the document's descriptions
name each rule) or carry what only the API itself can hand out: the opaque
cursors of the admin's lists and the routing table's version in If-Match,
or a `sendAt` outside the window around now that the server accepts.
"""

from datetime import datetime, timedelta, timezone

import schemathesis


def _instant(value):
    """Epoch milliseconds of an RFC 3339 time or a number, as Herald reads it."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return None


def _ordered(window):
    start, end = _instant(window.get("from")), _instant(window.get("to"))
    return start is None or end is None or start <= end


def _send_at_in_window(envelope):
    """`sendAt` is refused more than 5 minutes back or 366 days ahead of
    the server's now ([scheduling] defaults): a rule on the clock, not the
    schema. Leave a margin either side for the time the request takes."""
    if not isinstance(envelope, dict) or envelope.get("sendAt") is None:
        return True
    at = _instant(envelope["sendAt"])
    if at is None or not isinstance(envelope["sendAt"], str):
        return True
    now = datetime.now(timezone.utc)
    low = (now - timedelta(minutes=4)).timestamp() * 1000
    high = (now + timedelta(days=365)).timestamp() * 1000
    return low <= at <= high


@schemathesis.hook
def filter_case(ctx, case):
    label = f"{case.method.upper()} {case.path}"
    query = case.query or {}
    body = case.body if isinstance(case.body, dict) else {}
    if label == "POST /v1/events":
        events = case.body if isinstance(case.body, list) else [case.body]
        return all(_send_at_in_window(e) for e in events)
    if label in ("GET /v1/admin/deliveries", "GET /v1/admin/audit"):
        return "cursor" not in query and _ordered(query)
    if label in ("PUT /v1/admin/routing", "DELETE /v1/admin/routing"):
        headers = case.headers or {}
        return headers.get("If-Match", "*") == "*"
    if label == "POST /v1/admin/deliveries/retry":
        window = body.get("filter")
        return not isinstance(window, dict) or _ordered(window)
    if label == "PUT /v1/users/{user}/preferences":
        quiet = body.get("quietHours")
        return not isinstance(quiet, dict) or quiet.get("start") != quiet.get("end")
    return True

