"""Order validation and pricing: a realistic handler module with a sync and an async handler."""

import asyncio
import logging

import fnrt

log = logging.getLogger(__name__)
PRICES = {"apple": 0.5, "pear": 0.75, "melon": 2.0}  # reference data, loaded in the init phase


class InvalidOrder(Exception):
    pass


@fnrt.handler(timeout=5, memory_mb=256)
def validate(event, context):
    """Reject unknown items and bad quantities; return the priced order."""
    items = event.get("items")
    if not items:
        raise InvalidOrder("order has no items")
    lines = []
    for item in items:
        if item["sku"] not in PRICES:
            raise InvalidOrder(f"unknown sku {item['sku']!r}")
        if item["qty"] <= 0:
            raise InvalidOrder(f"quantity must be positive for {item['sku']}")
        lines.append({**item, "price": PRICES[item["sku"]] * item["qty"]})
    log.warning("order %s validated with %d lines", event.get("order_id"), len(lines))
    return {"order_id": event.get("order_id"), "lines": lines, "total": sum(x["price"] for x in lines)}


@fnrt.handler(timeout=5)
async def quote(event, context):
    """An async handler: looks up prices 'remotely' (concurrently) and sums them."""

    async def price(sku):
        await asyncio.sleep(0)
        return PRICES.get(sku, 0.0)

    prices = await asyncio.gather(*(price(sku) for sku in event["skus"]))
    return {"total": sum(prices), "remaining_ms": context.get_remaining_time_in_millis()}
