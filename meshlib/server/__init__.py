"""The inbound side: what Istio's sidecar does for requests coming in to the service.

* ``MeshMiddleware(app, mesh=None)`` — for any ASGI app (Starlette, FastAPI, …);
* ``MeshWSGIMiddleware(app, mesh=None)`` — for any WSGI app (Flask, Django, …);
* ``handler`` — a decorator for one sync or async handler function, in any framework;
* ``MeshAdmin`` / ``MeshWSGIAdmin`` — ``GET /_mesh/config``: the config in force (``admin``).

Each makes, per inbound request, the request context its outbound calls carry (``x-request-id``,
``spec.propagateHeaders``, the trace), the SERVER span when the mesh traces, and the
``InboundFinished`` event; ``x-request-id`` is echoed on the response. ``mesh=None`` is the
default mesh behind ``meshlib.client``, found at the first request. A context header whose value
no outbound call can send (raw non-ASCII bytes, a control character) is replaced or dropped and
counted: ``refused_headers()``.
"""

from meshlib.server.admin import MeshAdmin, MeshWSGIAdmin
from meshlib.server.asgi import MeshMiddleware
from meshlib.server.decorator import handler
from meshlib.server.inbound import DEADLINE_HEADER, Inbound, Served, refused_headers
from meshlib.server.wsgi import MeshWSGIMiddleware

__all__ = [
    "DEADLINE_HEADER",
    "Inbound",
    "MeshAdmin",
    "MeshMiddleware",
    "MeshWSGIAdmin",
    "MeshWSGIMiddleware",
    "Served",
    "handler",
    "refused_headers",
]
