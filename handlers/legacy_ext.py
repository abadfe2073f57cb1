"""Imports a C extension with single-phase init, which cannot load in a subinterpreter.

``_testsinglephase`` ships with CPython's test extensions; real-world equivalents are
extensions not yet ported to multi-phase init (numpy and many others, as of 2024).
"""

import _testsinglephase  # noqa: F401


def handler(event, context):
    return "loaded"
