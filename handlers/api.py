"""An HTTP API written with Powertools' event handler, served by fnrt behind a URL.

    python -m fnrt serve handlers.api --url api            # payload format 2.0, as a Function URL
    curl http://127.0.0.1:9001/api/orders/42

The same app works unchanged on a Lambda Function URL (``LambdaFunctionUrlResolver``) or
an API Gateway HTTP API (``APIGatewayHttpResolver``, the ``http_api`` handler below).
"""

from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    LambdaFunctionUrlResolver,
    Response,
    content_types,
)

import fnrt

ORDERS = {"42": {"id": "42", "item": "apple", "qty": 3}}


def _routes(app):  # one set of routes for both resolvers
    @app.get("/orders/<order_id>")
    def get_order(order_id: str):
        order = ORDERS.get(order_id)
        if order is None:
            return Response(404, content_types.APPLICATION_JSON, {"message": f"no order {order_id}"})
        return order

    @app.post("/orders")
    def create_order():
        body = app.current_event.json_body
        return Response(
            201,
            content_types.APPLICATION_JSON,
            {"created": body, "user_agent": app.current_event.request_context.http.user_agent},
            headers={"Location": "/orders/new"},
            cookies=["session=abc; Path=/", "theme=dark"],
        )

    @app.get("/search")
    def search():
        event = app.current_event
        return {
            "q": event.get_query_string_value("q"),
            "tags": event.query_string_parameters.get("tag"),
            "cookies": event.cookies,
            "header": event.headers.get("x-custom"),
        }

    @app.get("/boom")
    def boom():
        raise RuntimeError("the handler failed")

    return app


url_app = _routes(LambdaFunctionUrlResolver())
http_app = _routes(APIGatewayHttpResolver())


@fnrt.handler(timeout=5)
def api(event, context):
    return url_app.resolve(event, context)


@fnrt.handler(timeout=5)
def http_api(event, context):
    return http_app.resolve(event, context)
