"""productpage: the book's page, with its details and reviews (Istio's Bookinfo productpage, here in
Python on Starlette).

It calls details and reviews through meshlib (``from meshlib import client``) and keeps
Bookinfo's deliberate app timeouts, which Istio's tasks teach with: 3 s on details; 3 s on
reviews with one retry in this code, so 6 s in all before the page gives up on reviews.

Signing in keeps the user name in a cookie. ``EndUser``, the outermost middleware, turns that
cookie into the ``end-user`` header of the request, as an edge authentication filter would, and
drops any ``end-user`` header the browser sent itself. ``MeshMiddleware`` then makes it part of
the request's context, and meshlib carries it to details and reviews (``propagateHeaders``), and
reviews' mesh on to ratings: no code here or there copies a header.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from examples.bookinfo import serve
from meshlib import client
from meshlib.server import MeshMiddleware
from meshlib.server.asgi import ASGIApp, Receive, Scope, Send

DETAILS_URL = "http://details:9080/details/{product_id}"
REVIEWS_URL = "http://reviews:9080/reviews/{product_id}"
DETAILS_TIMEOUT = 3.0
#: "Do not remove. Bug introduced explicitly for illustration in fault injection task" (Istio's
#: productpage): 3 s per try, two tries.
REVIEWS_TIMEOUT = 3.0
REVIEWS_TRIES = 2

USER_COOKIE = "user"
USER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
DETAILS_ERROR = "Sorry, product details are currently unavailable for this book."
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."

PRODUCT_ID = 0
TITLE = "The Comedy of Errors"
SUMMARY = (
    "The Comedy of Errors is one of William Shakespeare's early plays. It is his shortest and one "
    "of his most farcical comedies, with a major part of the humour coming from slapstick and "
    "mistaken identity, in addition to puns and word play."
)


# --------------------------------------------------------------------------- the end user


def user_of(cookie_header: str | None) -> str | None:
    """The signed-in user named by the ``user`` cookie, if it is a valid name."""
    if not cookie_header:
        return None
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except CookieError:
        return None
    morsel = cookies.get(USER_COOKIE)
    if morsel is None or not USER_NAME.match(morsel.value):
        return None
    return morsel.value


class EndUser:
    """ASGI middleware: the ``user`` cookie becomes the request's ``end-user`` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope.get("headers") or () if k != b"end-user"]
            cookie = b"; ".join(v for k, v in headers if k == b"cookie").decode("latin-1")
            user = user_of(cookie)
            if user is not None:
                headers.append((b"end-user", user.encode("latin-1")))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- calls


async def product_details(http: httpx.AsyncClient, product_id: int) -> tuple[int, Any]:
    try:
        response = await http.get(
            DETAILS_URL.format(product_id=product_id), timeout=DETAILS_TIMEOUT
        )
    except httpx.HTTPError:
        return 500, {"error": DETAILS_ERROR}
    if response.status_code == 200:
        return 200, response.json()
    return response.status_code, {"error": DETAILS_ERROR}


async def product_reviews(http: httpx.AsyncClient, product_id: int) -> tuple[int, Any]:
    status = 500
    for _ in range(REVIEWS_TRIES):
        try:
            response = await http.get(
                REVIEWS_URL.format(product_id=product_id), timeout=REVIEWS_TIMEOUT
            )
        except httpx.HTTPError:
            status = 500
            continue
        if response.status_code == 200:
            return 200, response.json()
        status = response.status_code
    return status, {"error": REVIEWS_ERROR}


# --------------------------------------------------------------------------- the page

STYLE = """
:root { --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --brand: #326ce5; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: var(--ink); background: var(--bg); }
header.bar { display: flex; align-items: center; justify-content: space-between; gap: 1rem;
             padding: .75rem 2rem; background: #1b2a4a; color: #fff; }
header.bar a.brand { color: #fff; font-weight: 600; font-size: 1.15rem; text-decoration: none; }
header.bar form { display: flex; gap: .5rem; align-items: center; margin: 0; }
header.bar input { padding: .35rem .5rem; border: 1px solid #8da2c8; border-radius: 4px;
                   font: inherit; font-size: .9rem; width: 9rem; }
button { padding: .35rem .9rem; border: 0; border-radius: 4px; background: var(--brand);
         color: #fff; font: inherit; font-size: .9rem; cursor: pointer; }
.account { display: flex; align-items: center; gap: 1rem; }
.signed-in { font-size: .95rem; }
main { max-width: 62rem; margin: 2rem auto; padding: 0 1.5rem; }
.product { background: #fff; border: 1px solid var(--line); border-radius: 8px;
           padding: 1.5rem 2rem; }
.product h1 { margin: 0 0 .5rem; font-size: 2rem; }
.product .summary { margin: 0; color: var(--muted); }
.columns { display: grid; grid-template-columns: 1fr 1.4fr; gap: 1.5rem; margin-top: 1.5rem; }
.columns section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
                   padding: 1.25rem 1.5rem; }
h2 { margin: 0 0 1rem; font-size: 1.25rem; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .35rem 1rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
blockquote.review { margin: 0 0 1.25rem; padding: 0 0 0 1rem; border-left: 4px solid var(--line); }
blockquote.review p { margin: 0 0 .25rem; }
blockquote.review footer { color: var(--muted); font-size: .9rem; }
.stars { display: flex; gap: 2px; margin-top: .35rem; }
.stars svg { width: 20px; height: 20px; }
.rating-error { margin: .35rem 0 0; color: #9a6700; font-style: italic; }
.error h3 { margin: 0 0 .5rem; color: #cf222e; font-size: 1.1rem; }
.error p { margin: 0; }
.served { margin: 1rem 0 0; color: var(--muted); font-size: .85rem; }
footer.page { max-width: 62rem; margin: 0 auto 2rem; padding: 0 1.5rem; color: var(--muted);
              font-size: .85rem; }
"""

STAR_PATH = "M10 1.6l2.6 5.3 5.8.8-4.2 4.1 1 5.8L10 14.9l-5.2 2.7 1-5.8L1.6 7.7l5.8-.8z"
STAR_FILL = {"black": "#1f2328", "red": "#d1242f"}


def star(color: str, full: bool) -> str:
    paint = STAR_FILL.get(color, color)
    fill = paint if full else "none"
    kind = "full" if full else "empty"
    return (
        f'<svg class="star {kind}" data-star="{kind}" data-star-color="{html.escape(color)}" '
        f'viewBox="0 0 20 20" role="img" aria-label="{kind} star">'
        f'<path d="{STAR_PATH}" fill="{fill}" stroke="{paint}" stroke-width="1.2"/></svg>'
    )


def render_details(status: int, details: Any) -> str:
    if status != 200:
        return (
            '<div class="error" id="details-error"><h3>Error fetching product details!</h3>'
            f"<p>{html.escape(details.get('error', ''))}</p></div>"
        )
    rows = [
        ("Type", details.get("type")),
        ("Pages", details.get("pages")),
        ("Publisher", details.get("publisher")),
        ("Language", details.get("language")),
        ("ISBN-10", details.get("ISBN-10")),
        ("ISBN-13", details.get("ISBN-13")),
    ]
    cells = "".join(f"<dt>{name}</dt><dd>{html.escape(str(value))}</dd>" for name, value in rows)
    return f"<dl>{cells}</dl>"


def render_reviews(status: int, reviews: Any) -> str:
    if status != 200:
        return (
            '<div class="error" id="reviews-error"><h3>Error fetching product reviews!</h3>'
            f"<p>{html.escape(reviews.get('error', ''))}</p></div>"
        )
    parts = []
    for review in reviews.get("reviews", []):
        rating = review.get("rating") or {}
        stars = ""
        if rating.get("stars"):
            count, color = int(rating["stars"]), str(rating.get("color", "black"))
            shown = [star(color, True) for _ in range(count)]
            shown += [star(color, False) for _ in range(5 - count)]
            stars = (
                f'<div class="stars" data-stars="{count}" data-star-color="{html.escape(color)}">'
                f"{''.join(shown)}</div>"
            )
        elif rating.get("error"):
            stars = f'<p class="rating-error"><i>{html.escape(rating["error"])}</i></p>'
        parts.append(
            '<blockquote class="review">'
            f"<p>{html.escape(review.get('text', ''))}</p>"
            f"<footer>— {html.escape(review.get('reviewer', ''))}</footer>{stars}</blockquote>"
        )
    served = html.escape(str(reviews.get("podname", "")))
    parts.append(f'<p class="served">Reviews served by: <span>{served}</span></p>')
    return "".join(parts)


def render_page(
    user: str | None, details: tuple[int, Any], reviews: tuple[int, Any], version: str
) -> str:
    if user:
        account = (
            f'<span class="signed-in">Signed in as <b id="user">{html.escape(user)}</b></span>'
            '<form method="post" action="/logout"><button type="submit">Sign out</button></form>'
        )
    else:
        account = (
            '<form method="post" action="/login" id="login">'
            '<input name="username" placeholder="User name" aria-label="User name" required>'
            '<input name="passwd" type="password" placeholder="Password" aria-label="Password">'
            '<button type="submit">Sign in</button></form>'
        )
    served_by = ""
    if reviews[0] == 200:
        served_by = f' data-reviews-version="{html.escape(str(reviews[1].get("version", "")))}"'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Simple Bookstore App</title>
<style>{STYLE}</style>
</head>
<body>
<header class="bar"><a class="brand" href="/productpage">BookInfo Sample</a>
<div class="account">{account}</div></header>
<main>
<section class="product">
<h1>{html.escape(TITLE)}</h1>
<p class="summary"><b>Summary:</b> {html.escape(SUMMARY)}</p>
</section>
<div class="columns">
<section id="details"><h2>Book Details</h2>{render_details(*details)}</section>
<section id="reviews"{served_by}><h2>Book Reviews</h2>{render_reviews(*reviews)}</section>
</div>
</main>
<footer class="page">productpage {html.escape(version)} · Istio's Bookinfo on meshlib</footer>
</body>
</html>
"""


INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Simple Bookstore App</title>
<style>{style}</style></head>
<body><header class="bar"><a class="brand" href="/productpage">BookInfo Sample</a></header>
<main><section class="product"><h1>Hello!</h1>
<p>This is a simple bookstore application: productpage calls details and reviews, and reviews
v2 and v3 call ratings, each a service of its own on meshlib.</p>
<p><a href="/productpage">Open the product page</a></p></section></main></body></html>
"""


# --------------------------------------------------------------------------- the app


def build(version: str) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client.AsyncClient() as http:  # a stock httpx.AsyncClient on the mesh
            app.state.http = http
            yield

    async def index(request: Request) -> Response:
        return HTMLResponse(INDEX.format(style=STYLE))

    async def productpage(request: Request) -> Response:
        http = request.app.state.http
        details = await product_details(http, PRODUCT_ID)
        reviews = await product_reviews(http, PRODUCT_ID)
        user = request.headers.get("end-user")
        return HTMLResponse(render_page(user, details, reviews, version))

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0].strip()
        if not USER_NAME.match(name):
            return HTMLResponse("<p>User names are letters, digits and . _ @ -</p>", 400)
        response = RedirectResponse("/productpage", status_code=303)
        response.set_cookie(USER_COOKIE, name, httponly=True, samesite="lax")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/productpage", status_code=303)
        response.delete_cookie(USER_COOKIE)
        return response

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "Product page is healthy"})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/index.html", index),
            Route("/productpage", productpage),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["GET", "POST"]),
            Route("/health", health),
        ],
        middleware=[Middleware(EndUser), Middleware(MeshMiddleware)],
        lifespan=lifespan,
    )


if __name__ == "__main__":
    serve.run("productpage", build)
