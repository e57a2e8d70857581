"""``make bench``: every benchmark, each printing a table next to a same-run baseline.

``python -m bench mesh`` (or ``resilience``, ``server-model``, ``recovery``, ``cache``,
``rate-limit``, ``lease``, ``faults``, ``fault-filter``, ``otlp``, ``load``, ``notifications``,
``redis-commands``) runs one; extra arguments pass through, and every benchmark takes
``--quick`` for a short run.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "mesh": "bench.mesh_bench",
    "resilience": "bench.resilience_bench",
    "server-model": "bench.server_model_bench",
    "recovery": "bench.recovery_bench",
    "cache": "bench.cache_bench",
    "rate-limit": "bench.ratelimit_bench",
    "lease": "bench.lease_bench",
    "faults": "bench.faults_bench",
    "fault-filter": "bench.fault_filter_bench",
    "otlp": "bench.otlp_bench",
    "load": "bench.load_bench",
    "notifications": "bench.notification_bench",
    "redis-commands": "bench.redis_commands_bench",
}


def main(argv: list[str]) -> None:
    names = [argv[0]] if argv and argv[0] in BENCHMARKS else list(BENCHMARKS)
    rest = argv[1:] if argv and argv[0] in BENCHMARKS else argv
    for name in names:
        print(f"\n=== bench: {name} ===", flush=True)
        module = importlib.import_module(BENCHMARKS[name])
        sys.argv = [f"bench {name}", *rest]
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
