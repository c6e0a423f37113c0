import gc
from ipaddress import IPv4Address

import pytest

from netbootd.boot.leases import (
    AddressRange,
    Lease,
    LeaseBook,
    LeaseState,
    PoolCount,
    choose_address,
    client_key,
)

POOL = AddressRange.parse("10.0.0.10-10.0.0.12")
A, B, C = (IPv4Address(f"10.0.0.{n}") for n in (10, 11, 12))


def bound(address: IPv4Address, client: str, expires: float = 100.0) -> Lease:
    return Lease(address, client, "00:00:00:00:00:01", LeaseState.BOUND, expires)


def test_range_parse_and_membership() -> None:
    assert POOL.size == 3
    assert B in POOL and IPv4Address("10.0.0.13") not in POOL
    with pytest.raises(ValueError, match="ends before"):
        AddressRange.parse("10.0.0.9-10.0.0.1")
    with pytest.raises(ValueError, match="FIRST-LAST"):
        AddressRange.parse("10.0.0.9")


def test_huge_range_is_not_materialised() -> None:
    big = AddressRange.parse("10.0.0.1-10.255.255.254")
    assert big.size == 2**24 - 2
    assert choose_address((big,), LeaseBook(), "c", 0.0) == IPv4Address("10.0.0.1")


def test_client_key_prefers_client_identifier() -> None:
    assert client_key("aa:bb", b"\x01\xaa\xbb") == "id:01:aa:bb"
    assert client_key("aa:bb", None) == "mac:aa:bb"


def test_previous_address_then_requested_then_first_free() -> None:
    book = LeaseBook([bound(B, "x", expires=5.0)])
    # x's lease expired at 5.0, but it is still x's previous address.
    assert choose_address((POOL,), book, "x", 10.0) == B
    assert choose_address((POOL,), book, "y", 10.0, requested=C) == C
    assert choose_address((POOL,), book, "y", 1.0) == A  # B still held by x at 1.0
    assert choose_address((POOL,), book, "y", 1.0, requested=B) == A


def test_full_pool_and_quarantine() -> None:
    book = LeaseBook([bound(A, "a"), bound(B, "b")])
    book.put(Lease(C, "c", "m", LeaseState.DECLINED, 100.0))
    assert book.holder(C, 0.0) == ""
    # A pool otherwise full gives its quarantined address rather than nothing (RFC 2131
    # §4.3.3 keeps it out of the way only while there are others).
    assert choose_address((POOL,), book, "d", 0.0) == C
    book.put(Lease(C, "c2", "m", LeaseState.BOUND, 100.0))
    assert choose_address((POOL,), book, "d", 0.0) is None  # every address bound
    assert choose_address((POOL,), book, "d", 200.0) == A  # all expired


def test_book_moves_client_and_forgets_old_address() -> None:
    book = LeaseBook([bound(A, "x")])
    book.put(bound(B, "x"))
    assert book.at(A) is None
    assert book.of("x") == bound(B, "x")
    book.put(bound(B, "y"))  # an address taken over drops its old owner's index
    assert book.of("x") is None
    assert book.remove(B) == bound(B, "y")
    assert len(book) == 0


def test_first_free_goes_on_from_the_last_one_and_wraps() -> None:
    pool = AddressRange.parse("10.1.0.1-10.1.19.136")  # 5000 addresses
    book = LeaseBook()
    given = []
    for n in range(3000):
        address = choose_address((pool,), book, f"c{n}", 0.0)
        assert address is not None
        book.put(Lease(address, f"c{n}", "m", LeaseState.OFFERED, 60.0))
        given.append(address)
    assert len(set(given)) == 3000 and given[0] == pool.first
    # Asking again without taking it gives the same address: the search is not consumed.
    probe = choose_address((pool,), book, "new", 0.0)
    assert probe == choose_address((pool,), book, "new", 0.0) == IPv4Address("10.1.11.185")
    # The offers lapse; the next free one is found, then the search wraps to the start.
    book.put(Lease(IPv4Address("10.1.19.136"), "last", "m", LeaseState.BOUND, 9e9))
    assert choose_address((pool,), book, "late", 120.0) == probe
    for address in list(pool)[3000:4999]:
        book.put(Lease(address, str(address), "m", LeaseState.BOUND, 9e9))
    assert choose_address((pool,), book, "late", 120.0) == pool.first


def test_holds_says_whether_the_book_still_has_that_lease() -> None:
    book = LeaseBook([bound(A, "x")])
    assert book.holds(bound(A, "x"))
    assert not book.holds(bound(A, "x", expires=200.0))  # the same client, another lease
    assert not book.holds(bound(B, "x"))
    book.put(bound(A, "y"))
    assert not book.holds(bound(A, "x")) and book.holds(bound(A, "y"))
    book.remove(A)
    assert not book.holds(bound(A, "y"))


def test_the_garbage_collector_does_not_walk_the_books_leases() -> None:
    """A full collection walks every object it tracks: leases it tracked would make each one
    a pause that grows with the book."""
    pool = AddressRange.parse("10.3.0.1-10.3.39.64")  # 10,000 addresses
    book = LeaseBook()
    gc.collect()
    before = len(gc.get_objects())
    for n, address in enumerate(pool):
        state = LeaseState.OFFERED if n % 2 else LeaseState.BOUND
        book.put(Lease(address, f"c{n}", "m", state, 100.0 + n, "host" if n % 3 else None))
    book.expire(50.0)
    gc.collect()
    assert len(book) == pool.size
    assert len(gc.get_objects()) - before < 100
    # What the book gives back is the same as what it was given.
    assert book.at(IPv4Address("10.3.0.3")) == Lease(
        IPv4Address("10.3.0.3"), "c2", "m", LeaseState.BOUND, 102.0, "host"
    )
    assert book.of("c1") == Lease(
        IPv4Address("10.3.0.2"), "c1", "m", LeaseState.OFFERED, 101.0, "host"
    )


class CountingReserved:
    """An empty ``reserved`` container that counts the addresses it is asked about."""

    def __init__(self) -> None:
        self.asked = 0

    def __contains__(self, address: object) -> bool:
        self.asked += 1
        return False


def test_a_full_pool_is_known_full_without_a_walk() -> None:
    pool = AddressRange.parse("10.2.0.1-10.2.3.232")  # 1000 addresses
    book = LeaseBook(Lease(a, str(a), "m", LeaseState.BOUND, 100.0) for a in pool)
    reserved = CountingReserved()
    for n in range(50):
        assert choose_address((pool,), book, f"new{n}", 10.0, reserved=reserved) is None
    assert reserved.asked == 0
    # One lease ends: the count says so, and the walk finds its address.
    book.put(Lease(IPv4Address("10.2.1.1"), "10.2.1.1", "m", LeaseState.BOUND, 20.0))
    assert choose_address((pool,), book, "late", 30.0, reserved=reserved) == IPv4Address("10.2.1.1")
    assert 0 < reserved.asked <= pool.size
    # Leases that end later than the last look at the clock are seen ended all the same.
    assert choose_address((pool,), book, "later", 200.0) is not None


def offered(address: IPv4Address, client: str, expires: float) -> Lease:
    return Lease(address, client, "02:00:00:00:00:01", LeaseState.OFFERED, expires)


def test_a_pool_full_of_offers_gives_the_oldest_to_a_new_client() -> None:
    book = LeaseBook()
    for n, address in enumerate((B, A, C)):  # offered in this order
        book.put(offered(address, f"made-up-{n}", 20.0 + n))
    assert book.count(POOL) == PoolCount(3, 3)
    assert choose_address((POOL,), book, "new", 1.0) == B
    book.put(offered(B, "new", 21.0))
    assert choose_address((POOL,), book, "next", 1.0) == A  # the next oldest
    # The newest offer's own client keeps it; a reserved address is never taken.
    assert choose_address((POOL,), book, "new", 1.0) == B
    assert choose_address((POOL,), book, "next", 1.0, reserved={A}) == C


def test_oldest_first_holds_for_leases_put_before_the_pool_is_counted() -> None:
    book = LeaseBook([offered(C, "c", 30.0), offered(A, "a", 10.0), bound(B, "b")])
    assert book.oldest(POOL, LeaseState.OFFERED) == offered(A, "a", 10.0)
    assert book.oldest(None, LeaseState.OFFERED) == offered(C, "c", 30.0)  # put first
    assert choose_address((POOL,), book, "new", 1.0) == A


def test_offers_go_before_quarantines_and_leases_are_never_taken() -> None:
    book = LeaseBook([bound(A, "a")])
    book.put(Lease(B, "b", "m", LeaseState.DECLINED, 100.0))
    book.put(offered(C, "c", 20.0))
    assert book.declined(POOL) == 1
    assert choose_address((POOL,), book, "new", 1.0) == C
    book.put(bound(C, "new"))
    assert choose_address((POOL,), book, "other", 1.0) == B
    book.put(bound(B, "other"))
    assert book.declined(POOL) == 0
    assert choose_address((POOL,), book, "last", 1.0) is None
