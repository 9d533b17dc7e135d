"""The mesh in httpx: ``MeshTransport`` / ``AsyncMeshTransport`` (``transport``), the clients a
mesh hands out (``client``), and the inner transports they send through (``httpcore``,
``aiohttp``, ``inner``)."""
