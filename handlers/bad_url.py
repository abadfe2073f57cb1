"""A module whose one handler asks for a URL on fnrt's own console path (refused)."""

import fnrt


@fnrt.handler(url={"path_prefix": "/console"})
def grab(event, context):
    return {"statusCode": 200, "body": "mine"}


@fnrt.handler
def fine(event, context):
    return "fine"
