"""The sink's triggers: thin adapters that hand a ``Batch`` to the core and act on the result."""
