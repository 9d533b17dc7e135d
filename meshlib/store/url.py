"""Store URLs: where a fleet's rules and endpoints live.

* ``etcd://host:port[,host:port...][/prefix]``: an etcd v3 cluster, any of whose members may
  answer; every key lives under ``prefix`` (default ``/meshlib``).
* ``file://path``: the single-machine store, one rules file (relative paths are relative to
  the config file that names it, or to the current directory on the command line).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

DEFAULT_PREFIX = "/meshlib"
DEFAULT_ETCD_PORT = 2379


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: ``scheme`` is ``etcd`` or ``file``."""

    scheme: str
    #: etcd: the members' ``host:port`` (at least one); file: empty
    endpoints: tuple[str, ...] = ()
    #: etcd: the key prefix, ``/`` first, no ``/`` last; file: empty
    prefix: str = ""
    #: file: the rules file's path as written
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> StoreURL:
        """Parse ``text``; raises ``ValueError`` saying what is wrong with it."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                "a store URL must not be empty (etcd://host:port/prefix or file://path)"
            )
        text = text.strip()
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise ValueError(
                f"store {text!r} has no scheme: write etcd://host:port[,host:port...]/prefix "
                "or file://path"
            )
        scheme = scheme.lower()
        if scheme == "file":
            if not rest:
                raise ValueError("file:// store needs a path, e.g. file://rules/mesh.yaml")
            if "\x00" in rest:
                raise ValueError("file:// store path must not contain NUL")
            return cls("file", path=rest)
        if scheme != "etcd":
            raise ValueError(
                f"store scheme {scheme!r} is not supported: use etcd:// (a cluster) or file:// "
                "(one machine)"
            )
        hosts, slash, prefix = rest.partition("/")
        if not hosts:
            raise ValueError("etcd:// store needs at least one member, e.g. etcd://127.0.0.1:2379")
        endpoints = tuple(_member(part) for part in hosts.split(","))
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"etcd:// store names a member twice: {hosts}")
        prefix = "/" + prefix.strip("/") if slash and prefix.strip("/") else DEFAULT_PREFIX
        if any(c in prefix for c in "?#\x00") or "//" in prefix:
            raise ValueError(f"etcd:// store prefix {prefix!r} is not a plain key path")
        return cls("etcd", endpoints=endpoints, prefix=prefix)

    def resolve(self, base_dir: str) -> StoreURL:
        """A file store's path made absolute against ``base_dir`` (an etcd store as it is)."""
        if self.scheme != "file" or os.path.isabs(self.path):
            return self
        return StoreURL("file", path=os.path.normpath(os.path.join(base_dir, self.path)))

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"etcd://{','.join(self.endpoints)}{self.prefix}"


def _member(part: str) -> str:
    """``host:port`` of one etcd member (port 2379 when omitted); IPv6 in brackets."""
    part = part.strip()
    if not part:
        raise ValueError("etcd:// store has an empty member between commas")
    if part.startswith("["):
        host, bracket, tail = part[1:].partition("]")
        if not bracket:
            raise ValueError(f"etcd member {part!r}: unclosed '['")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"etcd member {part!r}: {host!r} is not an IPv6 address") from None
        port_text = tail.removeprefix(":") if tail else str(DEFAULT_ETCD_PORT)
        if tail and not tail.startswith(":"):
            raise ValueError(f"etcd member {part!r}: write [address]:port")
        host = f"[{host}]"
    else:
        host, colon, port_text = part.rpartition(":")
        if not colon:
            host, port_text = part, str(DEFAULT_ETCD_PORT)
        if not host or any(c in host for c in "/@?#[] "):
            raise ValueError(f"etcd member {part!r} is not host:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"etcd member {part!r}: port must be 1-65535")
    return f"{host}:{int(port_text)}"


__all__ = ["DEFAULT_ETCD_PORT", "DEFAULT_PREFIX", "StoreURL"]
