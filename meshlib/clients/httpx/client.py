"""The httpx clients a mesh hands out: ``httpx.Client`` / ``httpx.AsyncClient`` themselves, with
three pieces of per-request bookkeeping made cheaper and nothing else changed.

``Mesh.client()`` and ``Mesh.async_client()`` return ``MeshClient`` / ``MeshAsyncClient``:
subclasses, so ``isinstance(client, httpx.Client)`` holds, every argument and method is
httpx's, and a response is the same ``httpx.Response``. What differs is how much work a request
costs (measured per call, in memory, by ``python -m bench.compare``'s client rows):

* **Cookies.** httpx hands every response to ``http.cookiejar`` — building a ``urllib``
  request and an ``email`` message for it — to look for ``Set-Cookie``. Here the response's
  header list is scanned first and the cookie jar runs only when a ``Set-Cookie`` (or
  ``Set-Cookie2``) header is there: about 25 µs per call saved, cookies handled exactly as
  before (the jar ignores responses without those headers).
* **URLs.** A URL given as a string is parsed once and the parsed ``httpx.URL`` (immutable)
  reused for the next request to the same string (a bounded cache per client).
* **Headers.** The client's default headers and the request's are merged in one pass over the
  lists httpx already keeps, instead of a lookup and a removal per header name; the result is
  the same (a request header replaces every client header of its name).
"""

from __future__ import annotations

from typing import Any

import httpx

from meshlib.clients.httpx.headers import entries, with_entries

__all__ = ["MeshAsyncClient", "MeshClient"]

#: Parsed URLs kept per client, by the string the app passed.
URL_CACHE_SIZE = 512

_COOKIE_HEADERS = frozenset({b"set-cookie", b"set-cookie2"})


class _Cookies(httpx.Cookies):
    """``httpx.Cookies`` that skips the cookie jar for a response without cookies."""

    def extract_cookies(self, response: httpx.Response) -> None:
        found = entries(response.headers)
        if found is None:  # pragma: no cover - another httpx layout
            super().extract_cookies(response)
            return
        for entry in found:
            if entry[1] in _COOKIE_HEADERS:
                super().extract_cookies(response)
                return


class _Lean:
    """What ``MeshClient`` and ``MeshAsyncClient`` change in httpx's ``BaseClient``."""

    _urls: dict[str, httpx.URL]
    _cookies: httpx.Cookies
    base_url: httpx.URL
    headers: httpx.Headers

    def _lean_setup(self) -> None:
        self._urls = {}
        self._cookies = _Cookies(self._cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._cookies = _Cookies(cookies)

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        if type(url) is not str:
            return super()._merge_url(url)  # type: ignore[misc, no-any-return]
        urls = self._urls
        found = urls.get(url)
        if found is None:
            if len(urls) >= URL_CACHE_SIZE:
                urls.clear()
            found = urls[url] = super()._merge_url(url)  # type: ignore[misc]
        return found

    def _merge_headers(self, headers: Any = None) -> Any:
        merged = httpx.Headers(self.headers)
        if not headers:
            return merged
        given = httpx.Headers(headers)
        ours, theirs = entries(merged), entries(given)
        if ours is None or theirs is None:  # pragma: no cover - another httpx layout
            merged.update(given)
            return merged
        if ours:
            names = {entry[1] for entry in theirs}
            ours = [entry for entry in ours if entry[1] not in names]
        return with_entries(ours + theirs, merged)


class MeshClient(_Lean, httpx.Client):
    """``httpx.Client`` with the cheaper bookkeeping above (``Mesh.client()`` returns one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lean_setup()


class MeshAsyncClient(_Lean, httpx.AsyncClient):
    """``httpx.AsyncClient`` with the cheaper bookkeeping above (``Mesh.async_client()``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lean_setup()
