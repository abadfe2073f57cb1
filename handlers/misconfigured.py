"""A module whose decorator config is invalid: the init phase reports it."""

import fnrt


@fnrt.handler(timeout=0)
def bad(event, context):  # pragma: no cover
    return None
