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
