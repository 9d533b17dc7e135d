"""The request pipeline: one client-neutral core (``Call``: route, fault, retries, deadlines,
breakers, outlier detection, mirrors, telemetry) that every client adapter in ``meshlib.clients``
drives. Nothing in this package imports an HTTP client library."""
