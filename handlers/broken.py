"""A module whose init phase fails: importing it raises."""

import fnrt

CONFIG = {"table": "orders"}
raise RuntimeError(f"cannot connect to {CONFIG['table']} at import time")


@fnrt.handler
def never(event, context):  # pragma: no cover - the import fails first
    return None
