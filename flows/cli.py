"""`aunet`: the command line. Stage commands run a stage directly (no Prefect server needed);
`aunet run` and `aunet demo` run the full Prefect flow.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import yaml

from pipeline.config import ConfigError, load_config
from store.catalog import Catalog, StoreLocked

STAGES = ("manifest", "faces", "features", "prior", "train", "evaluate", "report")
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _print_summary(stage: str, summary: dict) -> None:
    printer = getattr(importlib.import_module(f"stages.{stage}"), "format_summary", None)
    if printer:
        print(printer(summary))
    else:
        print(json.dumps(summary, indent=2, default=str))


def _stage(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _overrides(args.set))
    stage = importlib.import_module(f"stages.{args.command}")
    kwargs = {"force": args.force, "progress": not args.quiet}
    if args.command == "train":
        kwargs.update(variants=args.variant, folds=args.fold)
    summary = stage.run(cfg, Catalog(cfg.store), **kwargs)
    _print_summary(args.command, summary)
    return 0


def _flow(args: argparse.Namespace) -> int:
    from flows.full import run_full_flow  # Prefect is imported only here

    config = Path(args.config) if args.command == "run" else DEMO_CONFIG
    overrides = _overrides(args.set)
    if args.command == "demo" and args.store:
        overrides["store"] = str(Path(args.store).resolve())
    result = run_full_flow(config_path=str(config), overrides=overrides, force=args.force)
    print(result)
    return 0


def _query(args: argparse.Namespace) -> int:
    from stages.report import run_query

    print(run_query(Catalog(args.store), args.sql))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aunet", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name in STAGES:
        s = sub.add_parser(name, help=f"run the {name} stage")
        s.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
        s.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=2")
        s.add_argument("--force", action="store_true", help="recompute even if up to date")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "train":
            s.add_argument("--variant", action="append", help="au_fan, au_vae, au_tdn, aunet (repeatable; default: config)")
            s.add_argument("--fold", action="append", type=int, help="fold number (repeatable; default: all)")
        s.set_defaults(func=_stage)
    r = sub.add_parser("run", help="run the full pipeline as a Prefect flow")
    r.add_argument("--config", required=True)
    r.add_argument("--set", action="append", metavar="KEY=VALUE")
    r.add_argument("--force", action="store_true")
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
    except (ConfigError, StoreLocked, FileNotFoundError, ValueError) as e:
        print(f"aunet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
