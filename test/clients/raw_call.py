"""One gRPC call from Python's grpcio at its default limits (4 MiB receive), over a Unix socket
or, with --tls, over TCP with mutual TLS.

    python3 raw_call.py <socket> </pkg.Service/Method> <request, base64> unary|stream|bidi
    python3 raw_call.py --tls CA,CERT,KEY [--authority NAME] [--timeout SECONDS] \\
        <host:port> </pkg.Service/Method> <request, base64> unary|stream|bidi

The request and each response are serialized protobuf, base64 on stdout (one line per
message); bidi sends each of a comma-separated list of requests over one stream. A failed call
prints "ERROR <CODE> <details>" on stderr and exits 3. No generated code: the caller encodes
and decodes, so any method can be tried as any client sees it.

--tls names PEM files: the CA that signed the server's certificate, and this client's own
certificate and key. --authority is the name the server's certificate is checked against (and
the :authority sent) when it is not the address dialled, e.g. a DNS name for an IP target.
"""

import argparse
import base64
import sys

import grpc


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One gRPC call from Python's grpcio.")
    parser.add_argument("--tls", metavar="CA,CERT,KEY", help="call HOST:PORT with mutual TLS")
    parser.add_argument("--authority", metavar="NAME", help="the server certificate's name")
    parser.add_argument("--timeout", type=float, default=60, help="deadline, seconds")
    parser.add_argument("target", help="a Unix socket's path; with --tls, HOST:PORT")
    parser.add_argument("method", help="/pkg.Service/Method")
    parser.add_argument("request_b64", help="the serialized request, base64 (bidi: a list, a,b,c)")
    parser.add_argument("kind", choices=["unary", "stream", "bidi"])
    args = parser.parse_args(argv)
    if args.tls is not None:
        files = args.tls.split(",")
        if len(files) != 3:
            parser.error("--tls takes three comma-separated files: CA,CERT,KEY")
        try:
            args.tls = [read(path) for path in files]
        except OSError as e:
            parser.error(f"--tls: {e}")
    if args.authority is not None and args.tls is None:
        parser.error("--authority needs --tls")
    return args


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls is None:
        return grpc.insecure_channel(f"unix://{args.target}")
    ca, cert, key = args.tls
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    # Straight to the address: never through a proxy named in the environment.
    options = [("grpc.enable_http_proxy", 0)]
    if args.authority is not None:
        options += [
            ("grpc.ssl_target_name_override", args.authority),
            ("grpc.default_authority", args.authority),
        ]
    return grpc.secure_channel(args.target, credentials, options)


def main() -> int:
    args = parse_args(sys.argv[1:])
    requests = [base64.b64decode(r) for r in args.request_b64.split(",")]
    with open_channel(args) as channel:
        try:
            if args.kind == "unary":
                responses = [channel.unary_unary(args.method)(requests[0], timeout=args.timeout)]
            elif args.kind == "stream":
                responses = channel.unary_stream(args.method)(requests[0], timeout=args.timeout)
            else:
                responses = channel.stream_stream(args.method)(iter(requests), timeout=args.timeout)
            for response in responses:
                print(base64.b64encode(response).decode(), flush=True)
        except grpc.RpcError as e:
            print(f"ERROR {e.code().name} {(e.details() or '')[:300]}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
