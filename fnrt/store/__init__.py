"""All SQL lives under this package: the database handle and one module per area.

Sources talk to small async classes here, never to SQL, so the SQLite default can later be
joined by a shared database server (see DESIGN.md section 9) behind the same methods.
"""

from ._db import Database

__all__ = ["Database"]
