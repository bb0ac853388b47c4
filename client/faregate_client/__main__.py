"""A quick call from a shell: `faregate-client "Hello" --budget-key demo [--stream]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from faregate_client import ClientTls, FaregateClient, FaregateError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faregate-client", description=__doc__)
    parser.add_argument("message", help="the user message to send")
    parser.add_argument("--target", default="127.0.0.1:50051", help="faregate's host:port")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FAREGATE_API_KEY"),
        help="sent as a bearer token (default: $FAREGATE_API_KEY)",
    )
    parser.add_argument("--budget-key", default="demo")
    parser.add_argument("--model", default="", help="a model or route (default route if empty)")
    parser.add_argument("--system", help="a system message to send first")
    parser.add_argument("--max-output-tokens", type=int)
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    parser.add_argument("--stream", action="store_true", help="print text as it arrives")
    tls = parser.add_argument_group("TLS (any of these turns it on)")
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    tls.add_argument("--ca", help="PEM file of the CA that signed faregate's certificate")
    tls.add_argument("--cert", help="PEM client certificate, for mutual TLS")
    tls.add_argument("--key", help="PEM private key of --cert")
    tls.add_argument("--server-name", help="the name in faregate's certificate, if not the host")
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    try:
        return asyncio.run(_call(args))
    except FaregateError as error:
        print(f"faregate-client: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"faregate-client: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 1


def _tls(args: argparse.Namespace) -> ClientTls | None:
    if not (args.tls or args.ca or args.cert or args.server_name):
        return None
    return ClientTls.from_files(args.ca, args.cert, args.key, args.server_name)


async def _call(args: argparse.Namespace) -> int:
    messages = [("user", args.message)]
    if args.system:
        messages.insert(0, ("system", args.system))
    options = dict(
        budget_key=args.budget_key,
        model=args.model,
        max_output_tokens=args.max_output_tokens,
        timeout_s=args.timeout,
    )
    async with FaregateClient(args.target, api_key=args.api_key, tls=_tls(args)) as client:
        if args.stream:
            stream = client.stream_route(messages, **options)
            async for text in stream:
                print(text, end="", flush=True)
            print()
            start, finish = stream.start, stream.finish
            assert start is not None
            assert finish is not None
            summary = (
                start.model_used, finish.usage.input_tokens, finish.usage.output_tokens,
                finish.cost_nano_usd, finish.budget_remaining_nano_usd,
            )  # fmt: skip
        else:
            reply = await client.route(messages, **options)
            print(reply.output)
            summary = (
                reply.model_used, reply.usage.input_tokens, reply.usage.output_tokens,
                reply.cost_nano_usd, reply.budget_remaining_nano_usd,
            )  # fmt: skip
    print(
        "model={} input_tokens={} output_tokens={} cost_nano_usd={} "
        "budget_remaining_nano_usd={}".format(*summary),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
