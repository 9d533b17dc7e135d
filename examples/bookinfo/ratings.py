"""ratings: the stars each reviewer gave (Istio's Bookinfo ratings v1, here in Python).

GET /ratings/<id>  ->  {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.bookinfo import serve
from meshlib import handler

RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


@handler
async def ratings(request: Request) -> JSONResponse:
    product_id = request.path_params["product_id"]
    return JSONResponse({"id": product_id, "ratings": RATINGS})


@handler
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "Ratings is healthy"})


def build(version: str) -> Starlette:
    return Starlette(
        routes=[
            Route("/ratings/{product_id:int}", ratings),
            Route("/health", health),
        ]
    )


if __name__ == "__main__":
    serve.run("ratings", build)
