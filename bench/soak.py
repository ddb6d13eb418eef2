"""Chaos soak: a 3-worker lab, a Deployment of 6 behind a Service rolled out once per
round while kubelets, kube-proxies, containerds and the master are killed with
SIGKILL in a seeded random order (tests/support/chaos.py says what and how), then
the invariants of tests/lab/test_chaos.py; prints a table of counts.

    sudo .venv/bin/python bench/soak.py --rounds 10 --seed 1

Needs root. The lab lives in its own folder and namespaces (never a developer's
`kubeling lab`) and is taken down at the end, also on failure or Ctrl-C; with
--keep-logs its logs stay in --dir.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.chaos import Chaos, Report, lab_options

from kubeling.lab.lab import Lab


async def soak(
    lab: Lab, rounds: int, seed: int, work: Path, overlap: bool
) -> tuple[Report, list[str]]:
    """Run the rounds and check every invariant; returns the report and the
    invariants that failed (with why)."""
    failed: list[str] = []
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    async with lab.client(timeout=20) as api:
        chaos = Chaos(lab, api, seed, work, progress=progress, overlap=overlap)
        try:
            report = await chaos.run(rounds)
            for name, check in (
                ("pods", chaos.check_pods),
                ("pod history", chaos.check_pod_history),
                ("sandboxes", chaos.check_sandboxes),
                ("writes", chaos.check_writes),
            ):
                try:
                    await check()
                    progress(f"invariant {name}: ok")
                except AssertionError as exc:
                    failed.append(f"{name}: {exc}")
                    progress(f"invariant {name}: FAILED {exc}")
        finally:
            await chaos.close()
    if report.unexcused:
        failed.append(f"traffic: {len(report.unexcused)} failures outside the excused windows")
    return report, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="the lab's folder (default: a new /tmp/klsoak-*)"
    )
    parser.add_argument(
        "--overlap", action="store_true", help="a round's kills overlap (several down at once)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the lab's logs in --dir")
    parser.add_argument(
        "--keep-lab-on-failure",
        action="store_true",
        help="leave a failed run's lab up to look at (then: kubeling lab down --dir DIR)",
    )
    args = parser.parse_args()
    # Short: unix socket paths are limited to 108 bytes.
    directory = args.dir or Path(f"/tmp/klsoak-{secrets.token_hex(3)}")
    lab = Lab(directory)
    work = directory / "logs" / "chaos"  # kept with the logs
    try:
        lab.up(lab_options(f"kls{secrets.token_hex(2)}-", args.nodes), progress=print)
        work.mkdir(parents=True, exist_ok=True)
        report, failed = asyncio.run(soak(lab, args.rounds, args.seed, work, args.overlap))
    except BaseException:
        traceback.print_exc()
        print(f"logs: {lab.logs}")
        if args.keep_lab_on_failure and lab.state is not None:
            print(f"the lab is still up: kubeling lab down --dir {directory}")
        else:
            lab.down(progress=lambda _: None, keep_logs=True)
        return 1
    print()
    for kill in report.kills:
        print(f"round {kill.round}: {kill.name} (PID {kill.pid}) down {kill.seconds:.1f}s")
    print()
    print(f"kills: {'overlapping within each round' if args.overlap else 'one at a time'}")
    print(report.table())
    for request in report.unexcused:
        during = ", ".join(k.name for k in report.overlapping(request)) or "no kill"
        print(f"unexcused failure: {request} during: {during}")
    for line in failed:
        print(f"INVARIANT FAILED: {line}")
    if failed and args.keep_lab_on_failure:
        print(f"the lab is still up: kubeling lab down --dir {directory}")
    else:
        lab.down(progress=lambda _: None, keep_logs=args.keep_logs or bool(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
