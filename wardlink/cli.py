"""The ``wardlink`` command line: ``run`` the system, ``bench`` it, print the effective ``config``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import msgspec

from state.errors import StateError
from wardlink import bench, config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wardlink", description="Device-telemetry backbone for a hospital.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, action="append", default=[],
                       help="TOML (or JSON) file merged over the embedded defaults; may be given several times")
        p.add_argument("--broker", help="the broker, mqtt://HOST:PORT (run: instead of the embedded one)")
        p.add_argument("--data-dir", help="where the store, outbox and state live (default ./data)")

    run = sub.add_parser("run", help="run the whole system (embedded broker and store, simulated hospital)")
    common(run)
    run.add_argument("--api-port", type=int, help="API port (default 8000)")
    run.add_argument("--no-simulation", action="store_true", help="do not start the simulated hospital")

    serve = sub.add_parser("serve", help="run one service against an external broker (a deployment's unit)")
    serve.add_argument("service", choices=("gateway", "ingest", "alerts", "facilities", "api"))
    serve.add_argument("--gateway", help="which gateway of the site (serve gateway)")
    serve.add_argument("--api-port", type=int, help="API port (serve api)")
    serve.add_argument("--instance", default="ingest-1",
                       help="this ingest worker's name, unique and stable across restarts (its spool is its own)")
    common(serve)

    sim = sub.add_parser("simulate", help="play a scenario's devices on their wire protocols")
    sim.add_argument("--scenario", help="a shipped scenario (hospital) or a scenario TOML file")
    sim.add_argument("--write-config", type=Path, help="write the devices' connections here (JSON, for --config)")
    common(sim)

    show = sub.add_parser("config", help="print the effective configuration as JSON")
    common(show)

    user = sub.add_parser("user", help="members of staff who sign in (the embedded identity provider)")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create or update a member of staff and set their password")
    add.add_argument("staff_id", help="the staff id (what they sign in with)")
    add.add_argument("--name", required=True, help="their name as shown to colleagues")
    add.add_argument("--role", required=True,
                     help="nurse, charge_nurse, facilities, biomed, admin or auditor")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (otherwise asked for at the terminal)")
    common(add)
    tok = sub.add_parser("token", help="print a short-lived API token for a member of staff (operator's command)")
    tok.add_argument("staff_id")
    common(tok)

    bc = sub.add_parser("broker-config", help="write a secured Mosquitto configuration for the site's gateways "
                                              "and services (TLS, one identity each, deny-by-default ACL)")
    bc.add_argument("--out", type=Path, required=True, help="directory to write into")
    bc.add_argument("--host", action="append", default=[],
                    help="the broker's DNS name or IP for its certificate and the clients' URL (repeatable)")
    bc.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    bc.add_argument("--tls", choices=("self-signed", "files"), default="self-signed",
                    help="self-signed: generate a private CA and certificates; "
                         "files: use --ca-file/--cert-file/--key-file")
    bc.add_argument("--ca-file", default="", help="--tls files: the CA that signed the broker certificate")
    bc.add_argument("--cert-file", default="", help="--tls files: the broker certificate")
    bc.add_argument("--key-file", default="", help="--tls files: the broker's private key")
    bc.add_argument("--client-certs", action="store_true",
                    help="identities by client certificate (self-signed only) instead of passwords")
    bc.add_argument("--ingest-workers", type=int, default=2, help="ingest identities to create (default 2)")
    common(bc)

    b = sub.add_parser("bench", help="run a benchmark and print its figures")
    b.add_argument("name", choices=[*sorted(bench.BENCHES), "all"], help="which benchmark (all: every one in turn)")
    b.add_argument("--write", type=Path, default=None,
                   help="all: also write the machine header and summary table into this Markdown file's "
                        "bench:all block (docs/benchmarks.md)")
    b.add_argument("--quick", action="store_true", help="a small run (seconds), for smoke tests")
    b.add_argument("--json", action="store_true", help="print one JSON object of figures")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "broker", None):
        out["broker"] = {"url": args.broker}
    if getattr(args, "data_dir", None):
        out["data_dir"] = args.data_dir
    if getattr(args, "api_port", None):
        out["api"] = {"port": args.api_port}
    if getattr(args, "no_simulation", False):
        out["simulation"] = {"enabled": False}
    if getattr(args, "scenario", None):
        out["simulation"] = {"scenario": args.scenario}
    return out


def _users(args: argparse.Namespace, cfg: config.Config) -> int:
    import getpass

    from wardlink import users
    from wardlink.runner import open_relational

    state = open_relational(cfg, cfg.site)
    try:
        if args.command == "token":
            sys.stdout.write(users.token(state, cfg.data_path, args.staff_id) + "\n")
            return 0
        password = (sys.stdin.readline().rstrip("\n") if args.password_stdin
                    else getpass.getpass(f"password for {args.staff_id}: "))
        users.add_user(state, args.staff_id, args.name, args.role, password)
        sys.stdout.write(f"staff {args.staff_id} ({args.role}) can sign in\n")
        return 0
    except (ValueError, StateError) as exc:
        raise config.ConfigError(str(exc)) from exc
    finally:
        state.close()


def _broker_config(args: argparse.Namespace, cfg: config.Config) -> int:
    from wardlink.broker_config import BrokerPlan, generate

    if args.tls == "files" and not (args.ca_file and args.cert_file and args.key_file):
        raise config.ConfigError("broker-config --tls files needs --ca-file, --cert-file and --key-file")
    if args.client_certs and args.tls != "self-signed":
        raise config.ConfigError("broker-config --client-certs issues certificates from the self-signed CA only")
    plan = BrokerPlan(cfg.site, args.out, hosts=args.host or ["localhost"], port=args.port, tls=args.tls,
                      client_certs=args.client_certs, ingest_workers=args.ingest_workers,
                      ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    ids = generate(plan)
    out = args.out.resolve()
    sys.stdout.write(f"wrote {out}/mosquitto.conf, acl, passwd and tls/ for {len(ids)} identities:\n")
    for identity in ids:
        sys.stdout.write(f"  {identity.role:8} {identity.name:24} --config {out}/credentials/{identity.name}.toml\n")
    sys.stdout.write(f"start the broker with: mosquitto -c {out}/mosquitto.conf\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wardlink`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("amqtt", "transitions", "websockets", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    # pymodbus logs an error and a frame dump on every timeout; the drivers log once per burst instead.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if not args.verbose else logging.INFO)
    try:
        if args.command == "bench" and args.name == "all":
            results = bench.run_all(args.quick)
            block = bench.summary(results, args.quick)
            if args.write is not None:
                bench.write_block(args.write, block)
            sys.stdout.write(json.dumps(results) + "\n" if args.json else block + "\n")
            return 0 if all(isinstance(r, dict) for r in results.values()) else 1
        if args.command == "bench":
            figures = bench.BENCHES[args.name](args.quick)
            sys.stdout.write(json.dumps(figures) + "\n" if args.json else bench.table(args.name, figures) + "\n")
            return 0
        cfg = config.load(args.config, overrides=_overrides(args))
        if args.command == "config":
            sys.stdout.write(json.dumps(msgspec.to_builtins(cfg), indent=2) + "\n")
            return 0
        # Imported late: `bench` and `config` need none of the services.
        if args.command == "broker-config":
            return _broker_config(args, cfg)
        if args.command in ("user", "token"):
            return _users(args, cfg)
        if args.command == "serve":
            from wardlink.serve import serve

            asyncio.run(serve(cfg, args.service, args.gateway, args.instance))
        elif args.command == "simulate":
            from wardlink.serve import simulate

            asyncio.run(simulate(cfg, args.write_config))
        else:
            from wardlink import runner

            asyncio.run(runner.main(cfg))
    except config.ConfigError as exc:
        logging.getLogger("wardlink").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
