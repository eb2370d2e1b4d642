"""The `clawmesh` command.

    clawmesh up                      the whole mesh on localhost, embedded defaults
    clawmesh serve ingest            one service (the container entrypoint)
    clawmesh send "hello" -s s1      one message, prints the reply
    clawmesh chat                    an interactive conversation in one session
    clawmesh health                  every service's health status
    clawmesh trace ID                one trace's waterfall, by trace id or request id
    clawmesh trace --list --slowest  the slowest recent traces (or --errored)
    clawmesh config check            validate settings (env + CLAWMESH_CONFIG file)
    clawmesh load CONFIG             ghz-compatible load run (see loadtest/README.md)
    clawmesh certs --out certs       a dev CA + a certificate per service (TLS, mTLS)
    clawmesh keys new --tenant acme  a new API key and the hash to configure
    clawmesh keys hash < key.txt     the hash of a key (read from stdin, never an argument)

Settings come from CLAWMESH_* variables and an optional YAML file
(``--config`` or CLAWMESH_CONFIG); see README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import uuid
from pathlib import Path

from clawmesh.services.registry import NAMES as SERVICES
from clawmesh.shared.settings import CONFIG_ENV, SettingsError, load_settings


def _settings(args):
    return load_settings(os.environ, getattr(args, "config", None))


def cmd_serve(args) -> int:
    from clawmesh.launcher.runner import serve
    from clawmesh.shared.security import Security, SecurityError, activate

    settings = _settings(args)
    try:  # the process's identity and secrets, checked before anything starts
        security = Security(settings.security, args.service)
        if args.service == "ingest":
            security.keys()
    except SecurityError as exc:
        print(f"clawmesh: {exc}", file=sys.stderr)
        return 2
    activate(security)
    return serve(args.service, settings)


def cmd_up(args) -> int:
    from clawmesh.launcher.up import run_up

    env = dict(os.environ)
    if getattr(args, "config", None):
        env[CONFIG_ENV] = os.path.abspath(args.config)
    return asyncio.run(run_up(env))


def _message(args, text: str, session: str):
    from clawmesh.common.v1 import common_pb2

    return common_pb2.InboundMessage(
        channel=args.channel, sender=args.sender, session_id=session, content=text,
        channel_message_id=uuid.uuid4().hex,
    )


async def _send(args, settings, texts, stream_out) -> int:
    import grpc

    from clawmesh.ingest.v1 import ingest_pb2, ingest_pb2_grpc
    from clawmesh.shared import metadata as md
    from clawmesh.shared.security.runtime import Security

    target = args.target or settings.ingest.target()
    metadata = ((md.TENANT, args.tenant),) if args.tenant else ()
    key = _api_key(args)
    if key:
        metadata = (*metadata, ("authorization", f"Bearer {key}"))
    # TLS when the mesh's ingest serves it (CA from security.cert_dir/client).
    async with Security(settings.security).channel(target, edge=True) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for text in texts:
            if text is None:
                return 0
            try:
                request = ingest_pb2.SubmitStreamRequest(message=_message(args, text, args.session))
                async for response in stub.SubmitStream(
                    request, metadata=metadata, timeout=args.timeout
                ):
                    stream_out(response.chunk)
            except grpc.aio.AioRpcError as exc:
                print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
                if not args.interactive:
                    return 1
    return 0


def _api_key(args) -> str:
    """The caller's API key: ``--api-key-file`` (kept out of shell history and ps) or ``--api-key``."""
    if getattr(args, "api_key_file", None):
        return Path(args.api_key_file).read_text().strip()
    return getattr(args, "api_key", "") or ""


def _print_chunk(chunk) -> None:
    if chunk.final:
        print(flush=True)
    else:
        print(chunk.delta, end="", flush=True)


def cmd_send(args) -> int:
    args.interactive = False
    return asyncio.run(_send(args, _settings(args), [" ".join(args.text)], _print_chunk))


def cmd_chat(args) -> int:
    args.interactive = True
    print(f"chatting in session {args.session!r}; Ctrl-D or /quit to leave", file=sys.stderr)

    def lines():
        while True:
            try:
                line = input("you> ")
            except EOFError:
                yield None
                return
            if line.strip() in ("/quit", "/exit"):
                yield None
                return
            if line.strip():
                print("bot> ", end="", flush=True)
                yield line

    return asyncio.run(_send(args, _settings(args), lines(), _print_chunk))


def cmd_health(args) -> int:
    from clawmesh.launcher.mesh import health_status, tool_credentials
    from clawmesh.services.registry import by_name

    settings = _settings(args)
    names = args.services or list(SERVICES)
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        print(f"clawmesh health: unknown service(s) {', '.join(unknown)}", file=sys.stderr)
        return 2

    async def check():
        return names, await asyncio.gather(
            *(health_status(settings.server(n).target(), by_name(n).grpc_name, args.timeout,
                            tool_credentials(settings, n))
              for n in names)
        )

    names, statuses = asyncio.run(check())
    snapshot = (asyncio.run(_snapshot(settings.metrics.target(), args.timeout,
                                      tool_credentials(settings, "metrics"))) if args.verbose else None)
    for name, status in zip(names, statuses, strict=True):
        print(f"{name:<9} {settings.server(name).target():<22} {status}")
        if snapshot is None:
            continue
        for svc in snapshot.services:
            if svc.service != name:
                continue
            print(f"  {svc.request_count} calls, {svc.error_count} server errors, "
                  f"p99 {svc.latency.p99_ms:.1f} ms, {svc.instances} instance(s)")
            for inst in svc.instance_details:
                for gauge, value in sorted(inst.gauges.items()):
                    print(f"  {inst.instance_id[:8]} {gauge.removeprefix('clawmesh.')} = {value:g}")
    if args.verbose and snapshot is None:
        print("(no figures: the metrics service did not answer)", file=sys.stderr)
    return 0 if all(s == "SERVING" for s in statuses) else 1


async def _snapshot(target: str, timeout_s: float, credentials=None):
    """The metrics service's snapshot (per-service figures and gauges), or None."""
    import grpc

    from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc

    channel = (grpc.aio.insecure_channel(target) if credentials is None
               else grpc.aio.secure_channel(target, credentials))
    async with channel:
        try:
            return await metrics_pb2_grpc.MetricsServiceStub(channel).GetSnapshot(
                metrics_pb2.GetSnapshotRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return None


def cmd_trace(args) -> int:
    as_list = args.list or args.order != "recent"
    if as_list == bool(args.id):
        print("clawmesh trace: give a trace id or a request id, or --list (not both)", file=sys.stderr)
        return 2
    if not 1 <= args.limit <= 1000:
        print("clawmesh trace: --limit must be 1 to 1000", file=sys.stderr)
        return 2
    return asyncio.run(_trace(args, args.target or _settings(args).metrics.target(), as_list))


async def _trace(args, target: str, as_list: bool) -> int:
    """Print one trace's waterfall, or a list of traces, from the metrics service."""
    import grpc

    from clawmesh.metrics.v1 import metrics_pb2, metrics_pb2_grpc
    from clawmesh.services.metrics.traces import is_trace_id
    from clawmesh.services.metrics.waterfall import trace_console, trace_list, waterfall
    from clawmesh.shared.security.runtime import Security

    console = trace_console()
    # The metrics service is internal: mTLS with the client identity and the mesh token, if set.
    async with Security(_settings(args).security).channel(target) as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        try:
            if as_list:
                order = metrics_pb2.TraceOrder.Value(f"TRACE_ORDER_{args.order.upper()}")
                response = await stub.ListTraces(metrics_pb2.ListTracesRequest(
                    order=order, limit=args.limit, service=args.service), timeout=args.timeout)
                if response.traces:
                    console.print(trace_list(response, console.width))
                else:
                    print(f"no {args.order} traces ({response.total_traces} held)", file=sys.stderr)
                return 0
            # Request ids are often 32 hex digits too: a trace id that is not found is
            # tried as a request id.
            fields = ("trace_id", "request_id") if is_trace_id(args.id) else ("request_id",)
            for field in fields:
                try:
                    response = await stub.GetTrace(
                        metrics_pb2.GetTraceRequest(**{field: args.id}), timeout=args.timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        continue
                    raise
                fill = "█" if console.encoding.lower().startswith("utf") else "#"
                console.print(waterfall(response, console.width, fill))
                return 0
        except grpc.aio.AioRpcError as exc:
            print(f"clawmesh trace: metrics service at {target}: {exc.code().name}: {exc.details()}",
                  file=sys.stderr)
            return 1
    print(f"clawmesh trace: no trace with id or request id {args.id!r} "
          f"(the metrics service at {target} keeps only recent traces)", file=sys.stderr)
    return 1


def cmd_config_check(args) -> int:
    from clawmesh.services.routing.rules import RulesError, check_rules
    from clawmesh.shared.policy import PolicyError, load_policy

    settings = _settings(args)
    try:
        policy = load_policy(settings.ingest.policy_file)
        check_rules(settings)
    except (PolicyError, RulesError) as exc:
        print(f"clawmesh: {exc}", file=sys.stderr)
        return 2
    print("settings OK" + (f"; policy {settings.ingest.policy_file} OK"
                           if settings.ingest.policy_file else "")
          + (f"; rules {settings.routing.rules_file} OK" if settings.routing.rules_file else ""))
    if args.show:
        print(settings.model_dump_json(indent=2))
        if settings.ingest.policy_file:
            print(policy.model_dump_json(indent=2))
    return 0


def cmd_certs(args) -> int:
    from pathlib import Path

    from clawmesh.shared.security.certs import CA_DIR, CLIENT, write_dev_certs

    out = Path(args.out)
    kept = (out / CA_DIR / "tls.key").exists() and not args.new_ca
    written = write_dev_certs(out, SERVICES, args.namespace or ["clawmesh", "clawmesh-dev"], args.days,
                              new_ca_=args.new_ca)
    dirs = sorted({p.parent.name for p in written})
    print(f"wrote {len(written)} files in {out}: {', '.join(d + '/' for d in dirs)}"
          f" ({'the CA in ' + CA_DIR + '/ kept' if kept else 'a new CA'}; {CLIENT}/ is the CLI's identity)")
    print(f"use them: CLAWMESH_SECURITY__CERT_DIR={out} CLAWMESH_SECURITY__TLS=true "
          "CLAWMESH_SECURITY__MTLS=true clawmesh up")
    return 0


def cmd_keys(args) -> int:
    from clawmesh.shared.security import SecurityError, hash_key, new_key
    from clawmesh.shared.security.keys import pepper_of

    try:
        pepper = pepper_of(_settings(args).security)
    except SecurityError as exc:
        print(f"clawmesh: {exc}", file=sys.stderr)
        return 2
    if args.action == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("clawmesh keys hash: give the key on stdin (never as an argument)", file=sys.stderr)
            return 2
        print(hash_key(key, pepper))
        return 0
    key = new_key()
    entry = f'hash: "{hash_key(key, pepper)}"'
    if args.label:
        entry += f", label: {args.label!r}"
    print(f"key: {key}\n(give it to the tenant now: only its hash is kept)\n"
          f"add under security.api_keys (or to the keys file):\n  {args.tenant}:\n    - {{{entry}}}")
    return 0


def cmd_load(argv: list[str]) -> int:
    from clawmesh.loadtest.cli import main as load_main

    return load_main(argv)


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command (`clawmesh config check --config F`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help=f"YAML settings file (default: ${CONFIG_ENV})")
    parser = argparse.ArgumentParser(prog="clawmesh", description=__doc__.split("\n")[0],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])

    sub.add_parser("up", help="run the whole mesh on localhost").set_defaults(func=cmd_up)
    p = sub.add_parser("serve", help="run one service")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=cmd_serve)

    for name, func, help_text in (("send", cmd_send, "send one message, print the reply"),
                                  ("chat", cmd_chat, "interactive conversation")):
        p = sub.add_parser(name, help=help_text)
        if name == "send":
            p.add_argument("text", nargs="+")
        p.add_argument("-s", "--session", default=f"cli-{uuid.uuid4().hex[:8]}")
        p.add_argument("--target", help="ingest address (default: from settings)")
        p.add_argument("--tenant", default="", help="x-clawmesh-tenant (default: the mesh's)")
        p.add_argument("--api-key", default="", help="the caller's API key (security.auth: api_key)")
        p.add_argument("--api-key-file", default="", help="... read from this file instead")
        p.add_argument("--channel", default="cli")
        p.add_argument("--sender", default=os.environ.get("USER", "cli-user"))
        p.add_argument("--timeout", type=float, default=30.0)
        p.set_defaults(func=func)

    p = sub.add_parser("health", help="health of every service")
    p.add_argument("services", nargs="*", help=f"some of: {', '.join(SERVICES)} (default: all)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also each service's figures and gauges (edge: admission, limits, dedup)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("trace", help="one trace's waterfall (by trace or request id), or --list")
    p.add_argument("id", nargs="?", help="trace id (32 hex digits) or request id")
    p.add_argument("--list", action="store_true", help="list recent traces")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--slowest", dest="order", action="store_const", const="slowest",
                       help="list the slowest traces first")
    order.add_argument("--errored", dest="order", action="store_const", const="errored",
                       help="list only traces with an error")
    p.add_argument("--limit", type=int, default=20, help="traces listed (default: 20, at most 1000)")
    p.add_argument("--service", default="", help="list only traces this service took part in")
    p.add_argument("--target", help="metrics address (default: from settings)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_trace, order="recent")

    p = sub.add_parser("config", help="settings tools")
    p.add_argument("action", choices=["check"])
    p.add_argument("--show", action="store_true", help="print the effective settings")
    p.set_defaults(func=cmd_config_check)

    p = sub.add_parser("certs", help="a dev CA and a certificate per service (cert-manager file names)")
    p.add_argument("--out", required=True, help="directory: ca/, one per service, client/")
    p.add_argument("--namespace", action="append",
                   help="Kubernetes namespace in the names (repeat; default: clawmesh, clawmesh-dev)")
    p.add_argument("--days", type=float, default=365, help="validity of the service certificates")
    p.add_argument("--new-ca", action="store_true", help="replace the CA in DIR/ca (else it is reused)")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("keys", help="API keys: `new` makes one, `hash` hashes one read from stdin")
    p.add_argument("action", choices=["new", "hash"])
    p.add_argument("--tenant", default="default", help="the tenant of a new key (for the snippet)")
    p.add_argument("--label", default="", help="a name for the new key, e.g. 2026-11")
    p.set_defaults(func=cmd_keys)

    sub.add_parser("load", help="ghz-compatible load run (clawmesh load --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:
        return cmd_load(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"clawmesh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
