"""reviews: two reviews of the book, in three versions (Istio's Bookinfo reviews, here in Python).

* v1 does not call ratings: no stars;
* v2 calls ratings and shows black stars; it waits for ratings 10 s;
* v3 calls ratings and shows red stars; it waits for ratings 2.5 s.

Those timeouts are the app's own, as in Istio's reviews service ("hard-coded at 10s"); they are
what Istio's fault-injection task teaches about. The call to ratings goes through meshlib, and
carries ``end-user`` on by itself: the service's ``propagateHeaders`` does it, not this code.

    GET /reviews/<id>  ->  {"id": "0", "podname": "reviews-v2 (pid 4242)", "version": "v2",
                            "reviews": [{"reviewer": "Reviewer1", "text": "...",
                                         "rating": {"stars": 5, "color": "black"}}, ...]}
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.bookinfo import serve
from meshlib import client, handler

RATINGS_URL = "http://ratings:9080/ratings/{product_id}"
#: Per version: does it call ratings, in which colour are its stars, how long does it wait.
STAR_COLOR = {"v2": "black", "v3": "red"}
RATINGS_TIMEOUT = {"v2": 10.0, "v3": 2.5}
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"

REVIEWS = (
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other "
        "plays by Shakespeare.",
    ),
)


async def fetch_ratings(http: httpx.AsyncClient, product_id: int, version: str) -> Any:
    """ratings' answer, or None when it did not come in time or was not a 200."""
    try:
        response = await http.get(
            RATINGS_URL.format(product_id=product_id), timeout=RATINGS_TIMEOUT[version]
        )
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return response.json().get("ratings", {})


def build(version: str) -> Starlette:
    color = STAR_COLOR.get(version)
    podname = f"reviews-{version} (pid {os.getpid()})"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client.AsyncClient() as http:  # a stock httpx.AsyncClient on the mesh
            app.state.http = http
            yield

    @handler
    async def reviews(request: Request) -> JSONResponse:
        product_id = request.path_params["product_id"]
        ratings = None
        if color is not None:
            ratings = await fetch_ratings(request.app.state.http, product_id, version)
        body = []
        for reviewer, text in REVIEWS:
            review: dict[str, Any] = {"reviewer": reviewer, "text": text}
            if color is not None:
                if ratings is None:
                    review["rating"] = {"error": RATINGS_UNAVAILABLE}
                else:
                    review["rating"] = {"stars": ratings.get(reviewer, 0), "color": color}
            body.append(review)
        return JSONResponse(
            {"id": str(product_id), "podname": podname, "version": version, "reviews": body}
        )

    @handler
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "Reviews is healthy"})

    return Starlette(
        routes=[Route("/reviews/{product_id:int}", reviews), Route("/health", health)],
        lifespan=lifespan,
    )


if __name__ == "__main__":
    serve.run("reviews", build)
