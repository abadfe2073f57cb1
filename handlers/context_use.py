"""Handlers that use ``context`` as Lambda's Python runtime lets them."""


def annotate(event, context):
    context.started_by = "me"  # handlers and libraries put their own attributes on it
    context.log("via context.log\n")
    return {"repr": repr(context), "mine": context.started_by, "fields": sorted(vars(context))}
