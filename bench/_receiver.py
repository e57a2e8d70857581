"""A real OTLP/gRPC trace receiver in a process of its own, so taking the stacks' spans does not
take the GIL from the bench's load generator.

It decodes each export request (protobuf's C parser, as grpcio hands it over) and counts its
spans, keeping none: meshkit.trace_testing's receiver also turns every span into Python objects
for tests to query, which here cost ~1.5 ms of CPU per traced order on the two cores the mesh
is measured on.

Prints its endpoint on the first line; when stdin closes, prints how many spans it received
and exits.
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Answers every export with success and counts the spans it carried."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()

    def Export(  # noqa: N802  # the OTLP service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        count = sum(
            len(scope.spans) for spans in request.resource_spans for scope in spans.scope_spans
        )
        with self._lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    receiver = CountingReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # The generated registration function is untyped.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        print(f"http://127.0.0.1:{port}", flush=True)
        sys.stdin.read()
    finally:
        server.stop(0).wait()
    print(receiver.spans, flush=True)


if __name__ == "__main__":
    main()
