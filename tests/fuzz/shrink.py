"""Delta debugging of a failing trace, and the standalone reproduction it writes."""

from __future__ import annotations

import json
import time
from typing import Any

from .runner import Env, Failure, describe_step, replay


def _same(failure: Failure | None, target: Failure) -> bool:
    return failure is not None and failure.signature == target.signature


def shrink(env: Env, trace: list[dict[str, Any]], failure: Failure, budget: float = 90.0,
           proc: Any = None) -> tuple[list[dict[str, Any]], Failure]:  # fmt: skip
    """ddmin over the steps up to the failing one: a minimal trace failing the same way."""
    deadline = time.monotonic() + budget
    current = trace[: failure.step + 1]
    best = failure

    def fails(candidate: list[dict[str, Any]]) -> Failure | None:
        out = replay(env, candidate, proc)
        return out.failure if _same(out.failure, failure) else None

    # the failing step alone, or with a few of its predecessors, is the common case
    for k in (0, 1, 2):
        if len(current) > k + 1:
            cand = current[-(k + 1):]
            f = fails(cand)
            if f is not None:
                current, best = cand[: f.step + 1], f
                break
    n = 2
    while len(current) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(current) // n)
        reduced = False
        for start in range(0, len(current), chunk):
            if time.monotonic() > deadline:
                break
            cand = current[:start] + current[start + chunk:]
            if not cand:
                continue
            f = fails(cand)
            if f is not None:
                current, best = cand[: f.step + 1], f
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(current), n * 2)
    # finally, shrink the probes of commit steps to the one that fails
    for i, step in enumerate(current):
        if len(step.get("probes", ())) > 1 and time.monotonic() < deadline:
            for p in step["probes"]:
                cand = [*current[:i], {**step, "probes": [p]}, *current[i + 1:]]
                f = fails(cand)
                if f is not None:
                    current, best = cand, f
                    break
    return current, best


REPRO = '''"""Reproduction written by the fuzzer: {signature}

seed {seed}, step {step}, database {db}, store {store}
{message}

Trace:
{listing}

Run: python {path}   (QC_PG_URL / QC_MARIADB_URL / QC_REDIS_URL pick the servers)
"""

import json
import sys
import tempfile

from tests.fuzz.runner import Env, replay
from tests.fuzz.schema import cli_url

TRACE = json.loads({trace!r})

if __name__ == "__main__":
    env = Env(cli_url({db!r}, tempfile.mkdtemp()), {store!r})
    out = replay(env, TRACE, verbose=True)
    print(out.failure.signature if out.failure else "no failure")
    print(out.failure.message if out.failure else "")
    sys.exit(1 if out.failure else 0)
'''


def write_repro(path: str, trace: list[dict[str, Any]], failure: Failure, seed: int, db: str,
                store: str, kind: str) -> None:  # fmt: skip
    listing = "\n".join(f"  {i}: {describe_step(s, kind)}" for i, s in enumerate(trace))
    with open(path, "w") as f:
        f.write(REPRO.format(signature=failure.signature, seed=seed, step=failure.step, db=db,
                             store=store, message=failure.message.replace('"""', "'''"),
                             listing=listing.replace('"""', "'''"), path=path,
                             trace=json.dumps(trace)))  # fmt: skip
