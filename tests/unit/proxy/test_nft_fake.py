"""The fake nftables backend the other proxy tests rely on, and transaction scripts."""

from __future__ import annotations

import pytest

from kubeling.proxy.nft import FakeNftables, NftError, Transaction, release_free_memory


def base() -> FakeNftables:
    fake = FakeNftables()
    tx = Transaction()
    tx.add_table()
    tx.add_chain("target")
    tx.add_chain("entry")
    tx.add_rule("entry", "jump target")
    tx.add_map("m", "type inet_service : verdict")
    tx.add_element("m", "80", "goto target")
    fake.apply(tx)
    return fake


def test_failed_transaction_changes_nothing() -> None:
    fake = base()
    before = fake.dump()
    tx = Transaction()
    tx.add_chain("new")  # fine on its own...
    tx.add_rule("new", "goto missing")  # ...but this one fails
    with pytest.raises(NftError, match="missing"):
        fake.apply(tx)
    assert fake.dump() == before
    assert fake.chain_rules("new") is None


@pytest.mark.parametrize(
    "build",
    [
        lambda tx: tx.delete_chain("target"),  # referenced by a rule and a map value
        lambda tx: tx.delete_chain("entry"),  # not empty
        lambda tx: tx.delete_chain("absent"),
        lambda tx: tx.add_element("m", "80", "goto entry"),  # exists with another value
        lambda tx: tx.add_element("m", "81"),  # a map element needs a value
        lambda tx: tx.delete_element("m", "443"),
        lambda tx: tx.add_rule("entry", "ip saddr @nosuchset accept"),
    ],
)
def test_fake_refuses_what_nft_refuses(build: object) -> None:
    fake = base()
    before = fake.dump()
    tx = Transaction()
    build(tx)  # type: ignore[operator]
    with pytest.raises(NftError):
        fake.apply(tx)
    assert fake.dump() == before


def test_fail_next_fails_once() -> None:
    fake = base()
    fake.fail_next = "boom"
    tx = Transaction()
    tx.add_chain("x")
    with pytest.raises(NftError, match="boom"):
        fake.apply(tx)
    assert fake.chain_rules("x") is None
    fake.apply(tx)
    assert fake.chain_rules("x") == []


def test_reads_of_the_fake() -> None:
    fake = base()
    assert fake.map_value("m", "80") == "goto target"
    assert fake.map_value("m", "81") is None
    assert fake.map_value("nomap", "80") is None
    assert fake.chain_rules("entry") == ["jump target"]
    assert FakeNftables().dump() == ""


def test_transaction_script_and_length() -> None:
    tx = Transaction()
    tx.add_table()
    tx.add_chain("nat-output", "type nat hook output priority -100")
    tx.add_rules("c", ["a", "b"])
    tx.add_rules("c", [])  # nothing to add: no command
    tx.add_elements("m", [("k1", "goto c"), ("k2", "goto c")])
    tx.add_element("s", "10.0.0.1 . 10.0.0.1")
    tx.delete_elements("s", ["x"])
    tx.flush_map("m")
    tx.delete_set("s")
    assert len(tx) == 1 + 1 + 2 + 2 + 1 + 1 + 1 + 1
    assert tx.script().splitlines() == [
        "add table ip kubeling",
        "add chain ip kubeling nat-output { type nat hook output priority -100 ; policy accept ; }",
        "add rule ip kubeling c a",
        "add rule ip kubeling c b",
        "add element ip kubeling m { k1 : goto c, k2 : goto c }",
        "add element ip kubeling s { 10.0.0.1 . 10.0.0.1 }",
        "delete element ip kubeling s { x }",
        "flush map ip kubeling m",
        "delete set ip kubeling s",
    ]


def test_release_free_memory_can_be_called_again() -> None:
    # glibc's malloc_trim, found once; a no-op elsewhere. It must never raise.
    release_free_memory()
    release_free_memory()
