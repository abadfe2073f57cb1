"""Event sources: the async invoke queue and stream event source mappings.

Sources know the runtime only through its invoke path (``Runtime._execute``) and keep all
their state in ``fnrt.store``.
"""
