"""Server URLs that never leak a credential: checked when the config is read, redacted in messages.

A model spec of ``backend: openai`` names its server by ``base_url``; the URL is recorded in
provenance and named in logs and errors, so it must carry no secret (the key travels in the
environment variable named by ``api_key_env``), and a key goes over plain ``http://`` only to
this machine.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

__all__ = ["check_base_url", "is_loopback", "redact_url"]


def redact_url(url: str) -> str:
    """``url`` with its user name, password, query and fragment replaced by ``***`` (for messages)."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    netloc = ("***@" if "@" in parts.netloc else "") + host + port
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "",
                                    "***" if parts.fragment else ""))


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, api_key_env: str | None = None) -> None:
    """Refuse a ``base_url`` that would leak a credential.

    It must be ``http://`` or ``https://`` with a host, and carry no user name or password
    (``https://user:pw@host``), query string (``?key=...``) or fragment: those would be recorded
    in provenance and named in logs and errors (a key belongs in the environment variable named
    by ``api_key_env``). With a key (``api_key_env``), plain ``http://`` is accepted only to a
    loopback host: the ``Authorization`` header would otherwise cross the network in clear text.
    Messages name the URL with its secret parts replaced by ``***``.

    Raises:
        ValueError: any of these.
    """
    shown = redact_url(base_url)
    try:
        parts = urllib.parse.urlsplit(str(base_url))
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as err:
        raise ValueError(f"base_url {shown} is not a URL: {err}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"base_url must start with http:// or https:// and name a host, not {shown!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"base_url {shown} carries a user name or password: put the key in an environment "
                         "variable and name it in api_key_env (the URL is recorded in provenance and logs)")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url {shown} carries a query string or fragment (a key?): give the server's base URL "
                         "only, and the key through api_key_env")
    if api_key_env and parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"base_url {shown} is plain http:// to {host}, which is not this machine: the key in "
                         f"${api_key_env} would cross the network unencrypted; use https:// (or a loopback address)")
