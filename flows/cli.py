"""`aunet`: the command line. Stage commands run a stage directly through the one stage runner
(no Prefect server needed); `aunet run` and `aunet demo` run the full Prefect flow.

Exit codes: 0 success; 1 a unit or stage failed (the others finished; the summary names it);
2 a user error (bad config, missing or stale input, locked store), printed as one message;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import load_config, parse_override
from pipeline.errors import UserError, storage_message
from stages import runner
from store.catalog import Catalog

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
EXIT_FAILED, EXIT_USER = 1, 2


def _overrides(pairs: list[str] | None) -> dict:
    return dict(parse_override(p) for p in pairs or [])


def _print_summary(stage: str, summary: dict) -> None:
    printer = getattr(runner.module(stage), "format_summary", None)
    print(printer(summary) if printer else json.dumps(summary, indent=2, default=str))
    if summary.get("cleaned"):
        print(f"  removed what an interrupted run left: {len(summary['cleaned'])} temporary files")


def _stage(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _overrides(args.set))
    select = None
    if args.command == "train":
        select = {"variants": args.variant, "folds": args.fold}
    summary = runner.execute(args.command, cfg, Catalog(cfg.store), force=args.force,
                             progress=not args.quiet, select=select)
    _print_summary(args.command, summary)
    failures = runner.format_failures(summary)
    if failures:
        print(failures, file=sys.stderr)
        return EXIT_FAILED
    return 0


def _flow(args: argparse.Namespace) -> int:
    from flows.full import run_full_flow  # Prefect is imported only here

    config = Path(args.config) if args.command == "run" else DEMO_CONFIG
    overrides = _overrides(args.set)
    if args.command == "demo" and args.store:
        overrides["store"] = str(Path(args.store).resolve())
    load_config(config, overrides)  # a bad config is said here, before any Prefect machinery
    ok, message = run_full_flow(config_path=str(config), overrides=overrides, force=args.force)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else EXIT_FAILED


def _query(args: argparse.Namespace) -> int:
    from store.query import run_query

    print(run_query(Catalog(args.store), args.sql))
    return 0


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=2")
    s.add_argument("--force", action="store_true", help="recompute even if up to date")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aunet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in runner.STAGES:
        s = sub.add_parser(name, help=f"run the {name} stage")
        _common(s)
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "train":
            s.add_argument("--variant", action="append",
                           help="au_fan, au_vae, au_tdn, aunet (repeatable; default: config)")
            s.add_argument("--fold", action="append", type=int,
                           help="test fold number (repeatable; default: the config's, else all)")
        s.set_defaults(func=_stage)
    r = sub.add_parser("run", help="run the full pipeline as a Prefect flow")
    _common(r)
    r.set_defaults(func=_flow)
    d = sub.add_parser("demo", help="generate the synthetic demo dataset and run the full flow on it")
    d.add_argument("--store", help="artifact folder (default: the demo config's)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=_flow)
    q = sub.add_parser("query", help="SQL over the Parquet report tables (DuckDB)")
    q.add_argument("sql")
    q.add_argument("--store", default="artifacts", help="artifact folder (default: artifacts)")
    q.set_defaults(func=_query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"aunet {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER
    except OSError as e:
        message = storage_message(e)
        if message is None:
            raise
        print(f"aunet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
