"""Multi-process grpc.aio load generator, for calls that need a distinct request each time.

h2load sends one identical body for every request, which suits reads and
Login. CreateLoan needs a new loan id per call and MakePayment a new request
id (and a loan with an installment left), so they are driven from here:
P processes, each an asyncio loop with its own HTTP/2 connections, run
`streams / P` closed-loop callers for a fixed time. Requests are serialized
by hand and sent as bytes through a generic stub, so the client does as
little as grpc.aio allows. Every call's status is checked: errors are
counted and reported, never folded into the figures.

Prints one JSON object: requests, errors by code, seconds, rps, p50/p99 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generated"))

import grpc  # noqa: E402
from lending.v1 import billing_pb2  # noqa: E402

from bench import methods  # noqa: E402


def _body_factory(args, proc: int, task: int, tasks_total: int):
    """A function i -> request bytes for the i-th call of this caller."""
    caller = proc * 1000 + task
    if args.kind == "fixed":
        body = bytes.fromhex(args.body_hex)
        return lambda i: body
    if args.kind == "create":
        return lambda i: billing_pb2.CreateLoanRequest(
            loan_id=f"C-{args.tag}-{caller}-{i}",
            principal_amount="5000000",
            start_date="2026-01-05",
        ).SerializeToString()
    if args.kind == "pay":
        # Each caller owns a disjoint slice of the payment loans, so no two
        # concurrent calls pay the same loan, and rotates through it.
        per = max(1, args.pay_loans // tasks_total)
        global_task = args.task_base[proc] + task
        first = global_task * per
        return lambda i: billing_pb2.MakePaymentRequest(
            loan_id=f"{methods.PAY_LOAN_PREFIX}{first + i % per}",
            amount=methods.PAYMENT_AMOUNT,
            request_id=f"{args.tag}-{caller}-{i}",
        ).SerializeToString()
    raise ValueError(args.kind)


async def _run_process(args, proc: int, tasks: int, tasks_total: int) -> dict:
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    calls = [ch.unary_unary(args.method) for ch in channels]  # bytes in, bytes out
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    started = time.perf_counter()
    measure_from = started + args.warmup
    stop_at = measure_from + args.duration
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def caller(task: int) -> None:
        call = calls[task % len(calls)]
        body = _body_factory(args, proc, task, tasks_total)
        i = 0
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            request = body(i)
            i += 1
            try:
                await call(request, metadata=metadata, timeout=30)
                ok = None
            except grpc.aio.AioRpcError as exc:
                ok = exc.code().name
            t1 = time.perf_counter()
            if t0 >= measure_from:
                if ok is None:
                    latencies.append(t1 - t0)
                else:
                    errors[ok] = errors.get(ok, 0) + 1

    await asyncio.gather(*(caller(t) for t in range(tasks)))
    for ch in channels:
        await ch.close()
    return {"latencies": latencies, "errors": errors}


def _process_main(args, proc: int, tasks: int, tasks_total: int, queue) -> None:
    queue.put(asyncio.run(_run_process(args, proc, tasks, tasks_total)))


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--kind", choices=("fixed", "create", "pay"), default="fixed")
    parser.add_argument("--body-hex", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--channels", type=int, default=4, help="HTTP/2 connections per process")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--tag", default=str(int(time.time())))
    parser.add_argument("--pay-loans", type=int, default=methods.PAY_LOANS)
    args = parser.parse_args(argv)
    split = [
        args.streams // args.processes + (p < args.streams % args.processes) for p in range(args.processes)
    ]
    args.task_base = [sum(split[:p]) for p in range(args.processes)]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, args=(args, p, split[p], args.streams, queue))
        for p in range(args.processes)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(lat for r in results for lat in r["latencies"])
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    report = {
        "requests": len(latencies),
        "errors": errors,
        "seconds": args.duration,
        "rps": len(latencies) / args.duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
