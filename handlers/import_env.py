"""A module that reads its configuration at import, as Lambda modules commonly do: the
region (a boto3 client made at module level needs it) and a variable its own decorator sets."""

import os

import fnrt

REGION = os.environ["AWS_REGION"]
TABLE = os.environ["TABLE_NAME"]
NAME_AT_INIT = os.environ["AWS_LAMBDA_FUNCTION_NAME"]


@fnrt.handler(environment={"TABLE_NAME": "orders"}, memory_mb=256)
def lookup(event, context):
    return {"region": REGION, "table": TABLE, "name_at_init": NAME_AT_INIT, "name": context.function_name}


@fnrt.handler(name="audit", environment={"AUDIT_SINK": "audit-log", "TABLE_NAME": "orders"})
def audit_entry(event, context):
    return {"sink": os.environ["AUDIT_SINK"], "table": TABLE}
