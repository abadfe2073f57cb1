"""Plain handlers for HTTP events: they show the event they got and answer as asked."""

import base64
import json
import time

import fnrt


@fnrt.handler
def show_event(event, context):
    """Return the event itself (no statusCode: a Function URL answers 200 with it as JSON)."""
    return event


@fnrt.handler
def respond(event, context):
    """Answer with the response the query string describes (``?kind=...``)."""
    kind = (event.get("queryStringParameters") or {}).get("kind", "ok")
    if kind == "binary":
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "image/png"},
            "body": base64.b64encode(b"\x89PNG\x00\x01").decode(),
            "isBase64Encoded": True,
        }
    if kind == "multi":
        return {
            "statusCode": 200,
            "headers": {"X-One": "1"},
            "multiValueHeaders": {"X-Many": ["a", "b"]},
            "body": "multi",
        }
    if kind == "malformed":
        return {"statusCode": "teapot", "body": 5}
    if kind == "fail":
        raise ValueError("asked to fail")
    if kind == "slow":
        time.sleep(5)
    if kind == "string":
        return "just a string"
    if kind == "framing":
        return {"statusCode": 200, "headers": {"Content-Length": "999", "Connection": "close"}, "body": "ok"}
    return {
        "statusCode": 203,
        "headers": {"Content-Type": "text/plain", "Access-Control-Allow-Origin": "https://evil.example"},
        "cookies": ["a=1", "b=2; HttpOnly"],
        "body": "made it",
    }


@fnrt.handler
def wrap_event(event, context):
    """Return the event as the JSON body of a 200 (a valid result for both payload formats)."""
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event)}


@fnrt.handler(url={"path_prefix": "/hello"})
def hello_url(event, context):
    """Declares its own function URL: served at /hello by ``python -m fnrt serve``."""
    return {"statusCode": 200, "body": f"hello from {event['rawPath']}"}


@fnrt.handler
def print_headers(event, context):
    """Print the request's headers (UTF-8 out, as any log is) and answer them, lower-cased,
    with the user agent and cookies of either payload format."""
    headers = {k.lower(): v for k, v in event["headers"].items()}
    if "cookies" in event:
        headers["cookie"] = ";".join(event["cookies"])
    agent = event["requestContext"].get("http", event["requestContext"].get("identity", {}))["userAgent"]
    headers["user-agent"] = agent
    text = json.dumps(headers, ensure_ascii=False)
    print(text)
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": text}
