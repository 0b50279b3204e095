"""CLI: ``python -m tests.fuzz --seconds N [--seed S] [--db sqlite|postgresql|mariadb]
[--store local|redis] [--processes 1|2] [--steps K] [--out DIR] [--keep-going]``.

Runs seeds ``S, S+1, ...`` (each a trace of ``--steps`` steps) until the time
is up. On a failure: prints the seed, the step and the shrunk trace, writes a
standalone reproduction to ``--out``, and (with ``--keep-going``) goes on with
the next seed, reporting each failure signature once. Exit status 1 if any
failure was found. URLs: ``QC_PG_URL`` / ``QC_MARIADB_URL`` / ``QC_REDIS_URL``,
by default the fuzzer's own ``test_fuzz`` databases and Redis db 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from . import gen
from .runner import Env, describe_step, replay
from .schema import DEFAULT_REDIS, cli_url
from .shrink import shrink, write_repro


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "mariadb"], default="sqlite")
    ap.add_argument("--store", choices=["local", "redis"], default="local")
    ap.add_argument("--processes", type=int, choices=[1, 2], default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--runs", type=int, default=None, help="stop after this many seeds")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "qc-fuzz-repros"))
    ap.add_argument("--keep-going", action="store_true", help="go on after a failure")
    ap.add_argument("--shrink-seconds", type=float, default=90)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--without", default="",
                    help=f"comma-separated features not to generate: {','.join(gen.FEATURES)}")
    args = ap.parse_args(argv)
    if args.processes == 2 and args.store != "redis":
        ap.error("--processes 2 needs --store redis (processes share versions only through Redis)")

    without = frozenset(w for w in args.without.split(",") if w)
    unknown = without - set(gen.FEATURES)
    if unknown:
        ap.error(f"unknown --without features: {sorted(unknown)}")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "big")
    redis_url = os.environ.get("QC_REDIS_URL") or DEFAULT_REDIS
    env = Env(cli_url(args.db, tempfile.mkdtemp(prefix="qcfuzz")), args.store, redis_url)
    proc = None
    if args.processes == 2:
        from .proc import OtherProcess

        proc = OtherProcess(env.url, redis_url)
    print(f"fuzz: db={args.db} store={args.store} processes={args.processes} "
          f"first seed={seed} steps/seed={args.steps} for {args.seconds:g}s")  # fmt: skip
    t0 = time.monotonic()
    seen: set[str] = set()
    failures = 0
    runs = hits = attempts = compared = steps = 0
    try:
        while time.monotonic() - t0 < args.seconds and (args.runs is None or runs < args.runs):
            trace = gen.generate(seed, args.steps, env.kind, args.processes, without)
            out = replay(env, trace, proc, verbose=args.verbose)
            runs += 1
            hits += out.hits
            attempts += out.hit_attempts
            compared += out.compared
            steps += out.steps_run
            f = out.failure
            if f is not None and f.signature not in seen:
                seen.add(f.signature)
                failures += 1
                print(f"\nFAILURE seed={seed} step={f.step} {f.signature}\n{f.message}")
                small, sf = shrink(env, trace, f, args.shrink_seconds, proc)
                print(f"shrunk to {len(small)} steps (failing at step {sf.step}):")
                for i, s in enumerate(small):
                    print(f"  {i}: {describe_step(s, env.kind)}")
                print(sf.message)
                os.makedirs(args.out, exist_ok=True)
                path = os.path.join(args.out, f"repro_{args.db}_{args.store}_{seed}.py")
                write_repro(path, small, sf, seed, args.db, args.store, env.kind)
                print(f"reproduction: {path}")
                if not args.keep_going:
                    break
            elif f is not None:
                print(f"seed={seed}: {f.signature} again (step {f.step})")
            seed += 1
    finally:
        if proc is not None:
            proc.close()
        env.close()
    ratio = f"{hits / attempts:.0%}" if attempts else "-"
    print(f"\n{runs} seeds, {steps} steps, {compared} comparisons, {failures} distinct failures, "
          f"hit ratio of repeated pure reads {hits}/{attempts} = {ratio}, "
          f"{time.monotonic() - t0:.0f}s")  # fmt: skip
    if attempts >= 20 and hits == 0:
        print("FAILURE: no repeated pure read was ever a hit")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
