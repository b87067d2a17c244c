"""Runs TensorZero's Rust gateway as the `tensorzero` PyPI package embeds it (an HTTP gateway in this
process) with the configuration given, prints its base URL, and serves until killed. Started by
bench/bench.py with TOKIO_WORKER_THREADS=1 (one worker thread, as Envoy's --concurrency 1) and no
observability database."""

import sys
import time

import tensorzero


def main() -> None:
    gateway = tensorzero._start_http_gateway(config_file=sys.argv[1], clickhouse_url=None, postgres_url=None,
                                             valkey_url=None, async_setup=False)
    print(f"BASE_URL {gateway.base_url}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
