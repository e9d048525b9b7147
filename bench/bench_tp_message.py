"""What one step's plan message costs the tensor-parallel driver and how late it reaches the workers
(issue 17: "a broadcast or a shared-memory ring: measure which costs less per step").

    python3 bench/bench_tp_message.py [--ranks 2] [--steps 400] [--json out.json]

The message is what tp_executor sends: a 16-int64 header, then the packed plan of a decode step of
B sequences with 2048-token block tables (block size 16), as int32. Two transports, same process layout (the driver plus ranks - 1 spawned workers on this machine):
- broadcast: two gloo broadcasts (header, payload) per step;
- ring: tp_executor.StepRing, the executor's transport: the driver copies header + payload into one
  of 8 shared-memory slots and releases each worker's semaphore; a worker sleeps on it, copies the
  message out and gives its slot credit back.
Per step: the driver's time in the send call (what the engine thread pays), and the delivery latency
(send start to the last worker holding its copy; CLOCK_MONOTONIC is one clock for all processes).
Medians and p99 over the steps, after 50 warm-up steps; the driver pauses 0.5 ms between steps (a
step's other work), so messages do not queue up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pagedcore import _core
from pagedcore.model_executor.tp_executor import StepRing

HEADER = 16
WARMUP = 50


def message_size(batch: int) -> int:
    return _core.plan_layout(batch, batch, batch, 2048 // 16, batch).size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, ranks: int, port: int, sizes: list[int], steps: int, rings: list, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    received = {}
    for size, ring in zip(sizes, rings):
        header, payload = torch.empty(HEADER, dtype=torch.int64), torch.empty(size, dtype=torch.int32)
        times = []
        for _ in range(WARMUP + steps):
            dist.broadcast(header, src=0)
            dist.broadcast(payload, src=0)
            times.append(time.monotonic())
        received[("broadcast", size)] = times
        dist.barrier()
        times = []
        for _ in range(WARMUP + steps):
            ring.read(rank)
            times.append(time.monotonic())
        received[("ring", size)] = times
        ring.close(unlink=False)
        dist.barrier()
    results[rank] = received
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    sizes = [message_size(b) for b in args.batches]
    port = _free_port()
    context = mp.get_context("spawn")
    rings = [StepRing(8 * HEADER + 4 * size, args.ranks - 1, context) for size in sizes]
    manager = context.Manager()
    results = manager.dict()
    workers = [context.Process(target=_worker, args=(r, args.ranks, port, sizes, args.steps, rings, results))
               for r in range(1, args.ranks)]
    for w in workers:
        w.start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=args.ranks)
    sent: dict = {}
    for size, ring in zip(sizes, rings):
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[0], header[9] = 1, size  # a step whose payload is `size` packed elements
        payload = torch.arange(size, dtype=torch.int32)
        for transport in ("broadcast", "ring"):
            starts, costs = [], []
            for _ in range(WARMUP + args.steps):
                start = time.monotonic()
                if transport == "broadcast":
                    dist.broadcast(header, src=0)
                    dist.broadcast(payload, src=0)
                else:
                    ring.write(header, payload, lambda: None)
                starts.append(start)
                costs.append(time.monotonic() - start)
                time.sleep(0.0005)
            sent[(transport, size)] = (starts, costs)
            dist.barrier()
    for w in workers:
        w.join()
    dist.destroy_process_group()
    received = dict(results)
    rows = []
    for batch, size in zip(args.batches, sizes):
        for transport in ("broadcast", "ring"):
            starts, costs = sent[(transport, size)]
            arrivals = np.max([received[r][(transport, size)] for r in range(1, args.ranks)], axis=0)
            latency = (np.asarray(arrivals) - np.asarray(starts))[WARMUP:] * 1e6
            cost = np.asarray(costs[WARMUP:]) * 1e6
            rows.append({"batch": batch, "bytes": 8 * HEADER + 4 * size, "transport": transport,
                         "send_us_p50": float(np.median(cost)), "send_us_p99": float(np.percentile(cost, 99)),
                         "latency_us_p50": float(np.median(latency)),
                         "latency_us_p99": float(np.percentile(latency, 99))})
    for ring in rings:
        ring.close(unlink=True)
    manager.shutdown()
    print("| decode batch | message bytes | transport | driver send us p50 / p99 | delivered after us p50 / p99 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['bytes']:,} | {r['transport']} | {r['send_us_p50']:.1f} / {r['send_us_p99']:.1f} | "
              f"{r['latency_us_p50']:.1f} / {r['latency_us_p99']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": args.ranks, "steps": args.steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
