"""A REST API (payload format 1.0) written with Powertools' ``APIGatewayRestResolver``.

    python -m fnrt serve handlers.rest_api --url rest_api@1.0
    curl http://127.0.0.1:9001/rest_api/orders/42
"""

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

import fnrt

app = APIGatewayRestResolver()


@app.get("/orders/<order_id>")
def get_order(order_id: str):
    event = app.current_event
    return {
        "id": order_id,
        "path": event.path,
        "method": event.http_method,
        "verbose": event.get_query_string_value("verbose"),
        "all_tags": event.multi_value_query_string_parameters.get("tag")
        if event.multi_value_query_string_parameters
        else None,
    }


@app.put("/orders/<order_id>")
def put_order(order_id: str):
    return Response(200, content_types.APPLICATION_JSON, {"id": order_id, "set": app.current_event.json_body})


@fnrt.handler(timeout=5)
def rest_api(event, context):
    return app.resolve(event, context)
