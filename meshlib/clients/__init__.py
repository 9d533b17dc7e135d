"""The mesh in each HTTP client, through that client's own extension point: one thin adapter
per client over the client-neutral core in ``meshlib.pipeline``.

Nothing is imported here: each adapter loads its client library only when it is used.
"""
