"""details: the book's details (Istio's Bookinfo details v1, here in Python).

GET /details/<id>  ->  {"id": 0, "author": "William Shakespeare", "year": 1595, ...}
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.bookinfo import serve
from meshlib import handler


def book(product_id: int) -> dict[str, object]:
    return {
        "id": product_id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


@handler
async def details(request: Request) -> JSONResponse:
    return JSONResponse(book(request.path_params["product_id"]))


@handler
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "Details is healthy"})


def build(version: str) -> Starlette:
    return Starlette(
        routes=[
            Route("/details/{product_id:int}", details),
            Route("/health", health),
        ]
    )


if __name__ == "__main__":
    serve.run("details", build)
