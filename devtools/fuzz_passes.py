"""A fuzz run over the phone-pass parser and the door's pass check (docs/development.md).

    python -m devtools.fuzz_passes [--inputs 1000000] [--seed 1]

Feeds ``--inputs`` hostile payloads through ``sync.credentials.parse_payload`` and, for those that
parse as a pass, ``kiosk.core.passes.check_pass`` against the genuine pass's record. The payloads
are mutations of genuine codes (bit flips, byte and character substitutions, truncations,
extensions, splices of two codes, a rewritten pass id or step) and codes made for another
organisation, with another key, or for a step far outside the window, plus random bytes and
random base32 bodies. Checks, for every input:

- only typed results, never an exception;
- nothing but a genuine, unaltered code (in canonical form) is ever accepted.

Exits 0 and prints one JSON line of counts (by result) when every input passed the checks, 1
with the first offending input (as hex) otherwise. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.core.model import Decision
from kiosk.core.passes import PassAccepted, PassRecord, check_pass
from sync.credentials import Malformed, parse_payload
from sync.passes import PhonePass, pass_payload, step_at

ORG = "org-fuzz"
PASS_ID = "FUZZAAAA"  # noqa: S105 - a pass id, not a secret
PERIOD_S = 15
WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def run(inputs: int, seed: int) -> tuple[Counter[str], bytes | None, str]:
    """Fuzz ``inputs`` payloads; returns (counts by result, the first offending input or None,
    what was wrong with it)."""
    rng = random.Random(seed)
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    other_key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    record = PassRecord(PASS_ID, "m-fuzz", ORG, key.public_key().public_bytes_raw(), PERIOD_S)
    now_step = step_at(WHEN.timestamp(), PERIOD_S)
    genuine = {pass_payload(key, ORG, PASS_ID, now_step + d).encode("ascii") for d in range(-2, 3)}
    seeds = [
        *sorted(genuine),
        pass_payload(other_key, ORG, PASS_ID, now_step).encode(),
        pass_payload(key, "org-other", PASS_ID, now_step).encode(),
        pass_payload(key, ORG, "FUZZAAAB", now_step).encode(),
        pass_payload(key, ORG, PASS_ID, now_step + 1000).encode(),
        pass_payload(key, ORG, PASS_ID, 0).encode(),
    ]
    counts: Counter[str] = Counter()
    for _ in range(inputs):
        payload = _mutant(rng, seeds)
        try:
            parsed = parse_payload(payload)
            if isinstance(parsed, Malformed):
                counts["malformed"] += 1
                continue
            if not isinstance(parsed, PhonePass):
                counts["card"] += 1
                continue
            result = check_pass(parsed, record, WHEN, used=False)
        except Exception as exc:  # the finding this run exists for
            return counts, payload, f"raised {type(exc).__name__}: {exc}"
        if isinstance(result, PassAccepted):
            if payload.strip(b" \t\r\n") not in genuine:
                return counts, payload, "accepted a code that is not a genuine one"
            counts["accepted"] += 1
        elif isinstance(result, Decision):
            counts[result.reason.value] += 1
        else:
            return counts, payload, f"returned {type(result).__name__}"
    return counts, None, ""


def _mutant(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One hostile payload: usually a mutation of a seed code, sometimes pure noise."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(0, 200))
    if roll < 0.10:
        return b"FFP1:" + "".join(rng.choices(_B32, k=117)).encode()
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3, 8))):
        op = rng.randrange(7)
        if op == 0 and data:  # flip one bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # another base32 character
            data[rng.randrange(len(data))] = ord(rng.choice(_B32))
        elif op == 2:  # truncate
            del data[rng.randrange(len(data) + 1) :]
        elif op == 3:  # extend
            data += rng.choice((b"A", b"=", b"\n", b" ", rng.randbytes(rng.randrange(1, 9))))
        elif op == 4:  # splice two codes
            other = rng.choice(seeds)
            cut = rng.randrange(min(len(data), len(other)) + 1)
            data = bytearray(data[:cut] + other[cut:])
        elif op == 5 and len(data) > 8:  # delete a character
            del data[rng.randrange(len(data))]
        elif op == 6:  # lower-case everything
            data = bytearray(bytes(data).lower())
    return bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.fuzz_passes", description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts, bad, why = run(args.inputs, args.seed)
    seconds = round(time.perf_counter() - started, 1)
    if bad is not None:
        print(f"fuzz_passes: {why}; input (hex): {bad.hex()}", file=sys.stderr)
        return 1
    print(json.dumps({"inputs": args.inputs, "seed": args.seed, "seconds": seconds, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
