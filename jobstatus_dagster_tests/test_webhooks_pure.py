"""Webhooks without I/O: Standard Webhooks signatures as the `standardwebhooks` package checks
them, secrets, the addresses we refuse to call, redaction, Retry-After."""

import base64
import json
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from jobstatus_dagster.core.webhooks import (
    new_secret,
    redact_url,
    refused_address,
    retry_after_seconds,
    scrub,
    signature_header,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_secrets_are_whsec_and_at_least_24_random_bytes() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24


@given(
    body=st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=5).map(
        lambda d: json.dumps(d, ensure_ascii=False).encode()
    ),
    message_id=st.uuids().map(str),
)
def test_signatures_verify_with_the_standardwebhooks_package_with_either_secret(
    body: bytes, message_id: str
) -> None:
    new, old = new_secret(), new_secret()
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header([new, old], message_id, timestamp, body),
    }
    for secret in (new, old):
        standardwebhooks.Webhook(secret).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(body, headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new).verify(body + b" ", headers)


def test_a_secret_chosen_before_secrets_were_generated_signs_with_its_bytes() -> None:
    legacy, body, timestamp = "receiver-s3cret", b'{"a":1}', int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "d1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header([legacy], "d1", timestamp, body),
    }
    standardwebhooks.Webhook(legacy.encode()).verify(body, headers)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "not globally reachable"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation
    ],
)
def test_non_public_addresses_are_refused_saying_what_they_are(address: str, kind: str) -> None:
    why = refused_address(address)
    assert why is not None and kind in why, why


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_are_called(address: str) -> None:
    assert refused_address(address) is None


def test_credentials_of_a_url_are_never_shown() -> None:
    url = "https://mis:pa55w0rd@mis.example:8443/hook?x=1"
    assert redact_url(url) == "https://***@mis.example:8443/hook?x=1"
    assert redact_url("https://mis.example/hook") == "https://mis.example/hook"
    message = f"ConnectError: cannot reach {url} as mis:pa55w0rd"
    assert "pa55w0rd" not in scrub(message, url)
    assert "***@mis.example" in scrub(message, url)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Thu, 03 Dec 2026 13:00:00 GMT", 3600.0),
        ("Thu, 03 Dec 2026 11:00:00 GMT", 0.0),  # in the past: now
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, NOW) == seconds
