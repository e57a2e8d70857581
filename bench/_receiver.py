"""A real OTLP/gRPC trace receiver (meshkit.trace_testing) in a process of its own, so decoding
the stacks' spans does not take the GIL from the bench's load generator.

Prints its endpoint on the first line; when stdin closes, prints how many spans it received
and exits.
"""

from __future__ import annotations

import sys

from meshkit.trace_testing import otlp_receiver


def main() -> None:
    with otlp_receiver() as receiver:
        print(receiver.endpoint, flush=True)
        sys.stdin.read()
        print(len(receiver.spans()), flush=True)


if __name__ == "__main__":
    main()
