from __future__ import annotations

import pytest

from apply.redact import MASK, Redactor

PEM = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDxZ0examplekeymaterial
-----END OPENSSH PRIVATE KEY-----"""


def test_known_secret_is_masked_everywhere() -> None:
    redactor = Redactor(["s3cr3t-value"])
    out = redactor.redact("a s3cr3t-value b s3cr3t-value")
    assert "s3cr3t-value" not in out
    assert out == f"a {MASK} b {MASK}"


def test_add_after_construction_and_longest_first() -> None:
    redactor = Redactor()
    redactor.add("abcd")
    redactor.add("abcdefgh")
    # The longer secret is masked whole, not as MASK + "efgh".
    assert redactor.redact("x abcdefgh y abcd") == f"x {MASK} y {MASK}"


def test_short_values_are_ignored() -> None:
    redactor = Redactor(["1", "ab", ""])
    assert len(redactor) == 0
    assert redactor.redact("1 ab") == "1 ab"


def test_add_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="expects a str"):
        Redactor().add(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("mysql --password=Pa55word1 db", "Pa55word1"),
        ("curl -d 'token=tok_ABCDEF' x", "tok_ABCDEF"),
        ("client_secret: zzz-top-secret", "zzz-top-secret"),
        ('{"api_key": "k-123456"}', "k-123456"),
        ("https://x.test/?a=1&token=qwerty&b=2", "qwerty"),
        ("SECRET=xyz987", "xyz987"),
    ],
)
def test_secret_shaped_assignments(text: str, leaked: str) -> None:
    out = Redactor().redact(text)
    assert leaked not in out
    assert MASK in out


def test_secret_assignment_keeps_the_rest() -> None:
    assert Redactor().redact("password=abc123 user=root") == f"password={MASK} user=root"


def test_authorization_header_keeps_scheme() -> None:
    out = Redactor().redact("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\nAccept: */*")
    assert out == f"Authorization: Bearer {MASK}\nAccept: */*"
    assert Redactor().redact("authorization:basicvalue") == f"authorization:{MASK}"


def test_pem_private_key_block() -> None:
    out = Redactor().redact(f"before\n{PEM}\nafter")
    assert "examplekeymaterial" not in out
    assert out.startswith("before\n-----BEGIN OPENSSH PRIVATE KEY-----")
    assert out.endswith("-----END OPENSSH PRIVATE KEY-----\nafter")


def test_truncated_pem_block_is_masked_to_the_end() -> None:
    out = Redactor().redact("-----BEGIN RSA PRIVATE KEY-----\nMIIEow_partial_material")
    assert "MIIEow_partial_material" not in out


def test_public_material_is_untouched() -> None:
    cert = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----"
    assert Redactor().redact(cert) == cert


def test_url_credentials() -> None:
    out = Redactor().redact("fetch https://user:hunter2x@mirror.test/a")
    assert "hunter2x" not in out
    assert out == f"fetch https://user:{MASK}@mirror.test/a"


def test_bytes_and_none() -> None:
    assert Redactor(["abcdef"]).redact(b"x abcdef") == f"x {MASK}"
    assert Redactor().redact(None) == ""


def test_extended_does_not_change_parent() -> None:
    parent = Redactor(["parent-secret"])
    child = parent.extended(["child-secret"])
    assert child.redact("parent-secret child-secret") == f"{MASK} {MASK}"
    assert parent.redact("child-secret") == "child-secret"
