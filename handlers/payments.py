"""A payment service's handlers: a card charge that a flaky gateway sometimes fails, and a
receipt mailer. The async invoke tests and ``examples.async_retries`` use them."""

import json
import os
import time

import fnrt


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time (worth retrying)."""


class CardDeclined(Exception):
    """The bank said no (retrying will not help)."""


def _attempt(ledger, request_id):
    """Record this attempt in the ledger file; return how many attempts this request had."""
    if not ledger:
        return 1
    with open(ledger, "a") as f:
        f.write(request_id + "\n")
    with open(ledger) as f:
        return sum(1 for line in f if line.strip() == request_id)


@fnrt.handler(
    timeout=5,
    async_config={
        "max_retry_attempts": 2,
        "retry_delays": [60, 120],
        "on_failure": "sink:failed-payments",
    },
)
def charge(event, context):
    """Charge a card. ``gateway_failures`` makes the first N attempts time out."""
    attempt = _attempt(event.get("ledger"), context.aws_request_id)
    if attempt <= event.get("gateway_failures", 0):
        raise GatewayTimeout(f"payment gateway timed out (attempt {attempt})")
    if event.get("card") == "declined":
        raise CardDeclined(f"card ending {event.get('last4', '0000')} was declined")
    print(f"charged {event['amount']} {event.get('currency', 'EUR')} on attempt {attempt}")
    return {"status": "charged", "order": event.get("order"), "amount": event["amount"], "attempt": attempt}


@fnrt.handler(timeout=2)
def send_receipt(event, context):
    """Append the receipt to the outbox file (one JSON line per send), after ``delay`` s."""
    time.sleep(event.get("delay", 0))
    line = json.dumps({"order": event.get("order"), "pid": os.getpid(), "request_id": context.aws_request_id})
    with open(event["outbox"], "a") as f:
        f.write(line + "\n")
    return {"sent": event.get("order")}


@fnrt.handler
def audit(event, context):
    """A destination function: receives Lambda's invocation record as its event."""
    return {
        "audited": event["requestContext"]["requestId"],
        "condition": event["requestContext"]["condition"],
    }
