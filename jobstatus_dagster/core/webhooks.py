"""Webhooks, pure: Standard Webhooks signatures, secrets, which addresses we refuse to call,
what a URL shows of itself, and how long a receiver asks us to wait. No I/O.

Standard Webhooks (standardwebhooks.com): ``webhook-signature`` is ``v1,`` + base64 of
HMAC-SHA256 over ``<webhook-id>.<webhook-timestamp>.<body>``, keyed by the base64-decoded part of
a ``whsec_`` secret; several signatures are space separated (a rotation's overlap).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix Standard Webhooks give secrets
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64 random bytes


def new_secret() -> str:
    """``whsec_`` + base64 of fresh random bytes: made by the server, shown once."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a stored secret: the decoded bytes of a ``whsec_`` secret; a secret that
    a client chose before secrets were generated (no prefix) signs with its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            pass  # not ours: treat the whole text as the key, as before
    return secret.encode()


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of one secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets_in_force: Iterable[str], message_id: str, timestamp: int, body: bytes
) -> str:
    """``webhook-signature``: one signature per secret in force (the new one first), space
    separated, so a receiver holding either secret verifies during a rotation's overlap."""
    return " ".join(standard_signature(s, message_id, timestamp, body) for s in secrets_in_force)


def legacy_signature(secret: str, body: bytes) -> str:
    """``X-Jobstatus-Signature``: ``sha256=<hex HMAC-SHA256 of the raw body>`` keyed by the
    secret's text, kept for receivers written before Standard Webhooks (no timestamp signed)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ----- targets ------------------------------------------------------------------------------
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refused_address(address: str) -> str | None:
    """What makes an IP address one we refuse to call (``"a loopback address"``), or None for a
    public one: link-local (169.254.169.254, the cloud metadata service), loopback, private,
    unspecified, multicast, reserved or otherwise not globally reachable, IPv4 or IPv6 (an IPv6
    address standing for an IPv4 one, e.g. ``::ffff:127.0.0.1``, is judged as that one)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone says nothing here
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            why = refused_address(str(embedded))
            return None if why is None else f"{why} (IPv4 {embedded})"
    for kind, flagged in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a reserved", ip.is_reserved),
        ("a private", ip.is_private),
        ("a not globally reachable", not ip.is_global),
    ):
        if flagged:
            return f"{kind} address"
    return None


def refusal(host: str, address: str) -> str | None:
    """Why ``host`` (resolved to ``address``) is not called, in a sentence; None if it is."""
    why = refused_address(address)
    if why is None:
        return None
    return f"{address} is {why}" if host == address else f"{host} resolves to {address}, {why}"


# ----- what a URL shows ---------------------------------------------------------------------
def redact_url(url: str) -> str:
    """The URL without its credentials (``user:pass@`` becomes ``***@``): what answers, logs and
    errors show of a stored URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc="***@" + host))


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) with the URL's credentials taken out wherever they appear."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text.replace(url, "<unparsable URL>")
    text = text.replace(url, redact_url(url))
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        password = userinfo.partition(":")[2]
        for secret in sorted({userinfo, password} - {""}, key=len, reverse=True):
            text = text.replace(secret, "***")
    return text


# ----- waiting as asked ---------------------------------------------------------------------
def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110); None
    when absent or unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
