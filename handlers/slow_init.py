"""A module with a slow init phase (loads a big model, say)."""

import time

print("loading the model", flush=True)
time.sleep(30)  # far past any init timeout a test sets


def handler(event, context):  # pragma: no cover - init times out first
    return None
