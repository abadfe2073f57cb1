"""A module whose init phase waits until the file named by ``INIT_GATE`` exists (a slow
model load that a test can finish when it wants)."""

import os
import time

while not os.path.exists(os.environ["INIT_GATE"]):
    time.sleep(0.002)


def handler(event, context):
    return {"remaining_ms": context.get_remaining_time_in_millis()}
