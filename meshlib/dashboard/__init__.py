"""The live mesh page (``meshctl dashboard``): a local web page that shows the mesh as it runs.

* ``model``: pure functions from what the services said to the page's JSON (graph, routes,
  breakers, revisions, call trees, layout);
* ``sources``: which services to poll, polling their admin endpoints, and Prometheus;
* ``server``: the poller and the HTTP server of the page and its JSON;
* ``static/``: the page itself (HTML, CSS, JavaScript; nothing loaded from elsewhere).
"""
