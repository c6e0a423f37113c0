"""A mutation fuzzer for the DHCP decoder, service and encoder: ``make fuzz-dhcp``.

Starts from the valid datagrams of :func:`tests.fuzz.dhcp_target.seeds` and, for the given
number of seconds, feeds :func:`tests.fuzz.dhcp_target.check` mutants of them: flipped bits,
octets set to edge values, option length octets rewritten, pieces cut, inserted, repeated or
spliced from another seed. A mutant that decodes joins the pool, so later mutants go deeper.
Any exception other than the decoder's ``DhcpDecodeError`` (which ``check`` absorbs) is a
failure: the input is written to ``--crashes`` and the run exits 1.

    python -m tests.fuzz.run_dhcp --seconds 600 [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from netbootd.proto.dhcp.codec import DhcpDecodeError, decode
from tests.fuzz.dhcp_target import check, seeds

_EDGES = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFE, 0xFF, 52, 53, 55, 57, 61, 82, 99)
_OPTIONS_START = 240
_POOL_LIMIT = 2000


@dataclass
class Result:
    inputs: int
    seconds: float
    decoded: int
    crashes: list[tuple[bytes, str]]

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _option_offsets(data: bytes) -> list[int]:
    """Where option codes sit in the options field, as far as it parses."""
    offsets, i = [], _OPTIONS_START
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        offsets.append(i)
        i += 2 + data[i + 1]
    return offsets


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """One to four random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        if kind == 0 and out:  # flip a bit
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # an octet to an edge value
            out[rng.randrange(len(out))] = rng.choice(_EDGES)
        elif kind == 2:  # rewrite an option's length octet
            offsets = _option_offsets(bytes(out))
            if offsets:
                i = rng.choice(offsets) + 1
                out[i] = rng.choice((0, 1, 2, 3, 4, 255, rng.randrange(256), max(out[i] - 1, 0)))
        elif kind == 3 and out:  # cut the tail
            del out[rng.randrange(len(out)) :]
        elif kind == 4:  # insert random octets
            i = rng.randrange(len(out) + 1)
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif kind == 5 and len(out) > 1:  # delete a piece
            i = rng.randrange(len(out))
            del out[i : i + rng.randint(1, 8)]
        elif kind == 6 and out:  # repeat a piece
            i = rng.randrange(len(out))
            piece = out[i : i + rng.randint(1, 32)]
            out[i:i] = piece
        elif kind == 7:  # splice in a piece of another input
            other = rng.choice(corpus)
            if other:
                j = rng.randrange(len(other))
                piece = other[j : j + rng.randint(1, 64)]
                i = rng.randrange(len(out) + 1)
                out[i : i + len(piece)] = piece
        elif kind == 8:  # header fields: op, htype, hlen, hops, flags
            field = rng.choice((0, 1, 2, 3, 10))
            if field < len(out):
                out[field] = rng.choice(_EDGES)
    return bytes(out)


def run(seconds: float, seed: int = 0, crashes: Path | None = None) -> Result:
    """Fuzz for ``seconds``; stop at the first crash."""
    rng = random.Random(seed)
    corpus = seeds()
    found: list[tuple[bytes, str]] = []
    inputs = decoded = 0
    start = time.monotonic()
    deadline = start + seconds
    for data in corpus:
        check(data)
    while time.monotonic() < deadline and not found:
        for _ in range(200):
            data = mutate(rng.choice(corpus), rng, corpus)
            inputs += 1
            try:
                check(data)
            except Exception:
                found.append((data, traceback.format_exc()))
                break
            try:
                decode(data)
            except DhcpDecodeError:
                continue
            decoded += 1
            if len(corpus) < _POOL_LIMIT:
                corpus.append(data)
            else:
                corpus[rng.randrange(len(seeds()), _POOL_LIMIT)] = data
    elapsed = time.monotonic() - start
    if crashes is not None:
        for data, _ in found:
            crashes.mkdir(parents=True, exist_ok=True)
            (crashes / f"crash-{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)
    return Result(inputs, elapsed, decoded, found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--crashes", type=Path, default=Path(".fuzz-crashes"))
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # a line per bad input is the service's job, not ours
    result = run(args.seconds, args.seed, args.crashes)
    print(
        f"fuzz-dhcp seed={args.seed} inputs={result.inputs} seconds={result.seconds:.1f} "
        f"rate={result.rate:.0f}/s decoded={result.decoded} crashes={len(result.crashes)}"
    )
    for data, trace in result.crashes:
        print(f"input {data.hex()}\n{trace}", file=sys.stderr)
    return 1 if result.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
