"""Handlers that log through ``logging`` and ``print``: Lambda's advanced logging controls."""

import logging
import os

logger = logging.getLogger("orders")
logger.info("loaded at init")


def logs(event, context):
    print("plain print")
    logger.debug("debug detail")
    logger.info("order placed", extra={"order_id": event.get("order", "A-1")})
    logger.warning("stock low")
    try:
        print(1 / 0)
    except ZeroDivisionError:
        logger.exception("could not divide")
    return {
        "format": os.environ.get("AWS_LAMBDA_LOG_FORMAT"),
        "level": os.environ.get("AWS_LAMBDA_LOG_LEVEL"),
        "group": context.log_group_name,
        "root_level": logging.getLogger().level,
    }


def fails(event, context):
    logging.getLogger().error("about to fail")
    raise ValueError("bad order")


def own_format(event, context):
    """Formats the runtime's handler its own way, and adds a handler of its own: both read
    the request id Lambda's runtime puts on every record (``%(aws_request_id)s``)."""
    import sys

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(levelname)s|%(aws_request_id)s|%(message)s"))
    mine = logging.StreamHandler(sys.stdout)
    mine.setFormatter(logging.Formatter("mine %(aws_request_id)s %(message)s"))
    root.addHandler(mine)
    try:
        logging.getLogger("app").info("formatted", stack_info=False)
    finally:
        root.removeHandler(mine)
    return context.aws_request_id


def prints_levels(event, context):
    """Prints JSON lines with a ``level`` of their own, as code without Lambda's logging
    module does (Lambda filters them too), and a line of plain text."""
    print('{"level": "debug", "msg": "printed debug"}')
    print('{"level": "error", "msg": "printed error"}')
    print('{"msg": "printed without a level"}')
    print("plain text")
    return "printed"
