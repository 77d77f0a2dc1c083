"""One gRPC call from Python's grpcio at its default limits (4 MiB receive), over a Unix socket.

    python3 raw_call.py <socket> </pkg.Service/Method> <request, base64> unary|stream

The request and each response are serialized protobuf, base64 on stdout (one line per
message); a failed call prints "ERROR <CODE> <details>" on stderr and exits 3. No generated
code: the caller encodes and decodes, so any method can be tried as any client sees it.
"""

import base64
import sys

import grpc


def main() -> int:
    socket, method, request_b64, kind = sys.argv[1:5]
    request = base64.b64decode(request_b64)
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        try:
            if kind == "unary":
                responses = [channel.unary_unary(method)(request, timeout=60)]
            else:
                responses = channel.unary_stream(method)(request, timeout=60)
            for response in responses:
                print(base64.b64encode(response).decode(), flush=True)
        except grpc.RpcError as e:
            print(f"ERROR {e.code().name} {(e.details() or '')[:300]}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
