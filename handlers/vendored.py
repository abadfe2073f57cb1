"""A module that imports, as it is loaded, a library from a folder its function's
``PYTHONPATH`` names (a vendored folder, a layer's path), as Lambda functions do."""

import importlib
import os

LIBRARY = importlib.import_module(os.environ.get("VENDORED_MODULE", "json"))


def handler(event, context):
    return {"value": getattr(LIBRARY, "VALUE", None), "pythonpath": os.environ.get("PYTHONPATH")}
