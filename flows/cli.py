"""`aunet`: the command line. Stage commands run a stage directly through the one stage runner
(no Prefect server needed); `aunet run` and `aunet demo` run the full Prefect flow.

Exit codes, the same for every command:
  0  it did what was asked (up to date counts);
  1  a unit failed on a bug or a crashed worker (the others finished; the summary names it and
     keeps its traceback);
  2  the user's input or state: a bad config, option or input (a label file, a manifest row,
     a video the stage cannot read), a missing or stale input artifact, a locked store, a store
     path that is a file, a full disk; said in one line. Also when units failed and every
     failed unit failed for one of these reasons.
(`aunet predict` counts its inputs as units: see docs/predict.md.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from pipeline.config import FacesConfig, Variant, load_config, parse_override
from pipeline.errors import UserError, object_store_message, storage_message
# Heavy libraries (torch, pandas, scikit-learn, Prefect, Dask) are imported where a command
# uses them, not here: `aunet --help` and a config error answer in well under a second.

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
EXIT_FAILED, EXIT_USER = 1, 2


def _overrides(pairs: list[str] | None) -> dict:
    return dict(parse_override(p) for p in pairs or [])


def _print_summary(stage: str, summary: dict) -> None:
    from stages import runner

    printer = getattr(runner.module(stage), "format_summary", None)
    print(printer(summary) if printer else json.dumps(summary, indent=2, default=str))
    if summary.get("cleaned"):
        print(f"  removed what an interrupted run left: {len(summary['cleaned'])} temporary files")


def _fold(text: str) -> int:
    """A test fold number, or `all` (every subject: the model a user deploys)."""
    if text == "all":
        from pipeline.folds import ALL_SUBJECTS

        return ALL_SUBJECTS
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fold is a number >= 1 or 'all', not {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"a fold is a number >= 1 or 'all', not {text!r}")
    return k


def _stage(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _overrides(args.set))  # a bad config is said before the imports
    from stages import runner
    from store.catalog import Catalog

    if getattr(args, "fold_draws", None):  # evaluate --fold-draws K: every stage, K fold draws
        from stages import fold_draws

        summary = fold_draws.run(cfg, args.fold_draws, force=args.force, progress=not args.quiet)
        print(fold_draws.format_summary(summary))
        return EXIT_FAILED if summary["failed"] else 0
    select = None
    if args.command in ("train", "prior"):
        select = {"variants": getattr(args, "variant", None), "folds": args.fold}
    if args.command == "features":
        select = {"verify": args.verify}
    summary = runner.execute(args.command, cfg, Catalog(cfg.store), force=args.force,
                             progress=not args.quiet, select=select)
    _print_summary(args.command, summary)
    return _report_failures(summary)


def _report_failures(summary: dict) -> int:
    """Print the failed units; the exit code for them (module docstring)."""
    from stages import runner

    failures = runner.format_failures(summary)
    if not failures:
        return 0
    print(failures, file=sys.stderr)
    return EXIT_USER if runner.user_failures_only(summary) else EXIT_FAILED


def _flow(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.command == "run" else DEMO_CONFIG
    overrides = _overrides(args.set)
    if args.command == "demo" and args.store:
        overrides["store"] = str(Path(args.store).resolve())
    cfg = load_config(config, overrides)  # a bad config is said here, before Prefect starts
    from flows.full import run_full_flow  # Prefect is imported only here
    from flows.server import temporary_server

    with temporary_server():  # stops with this process, even when it is killed (flows/server.py)
        ok, message, user = run_full_flow(config_path=str(config), overrides=overrides, force=args.force)
    code = 0 if ok else EXIT_USER if user else EXIT_FAILED
    if ok and args.command == "demo":
        try:
            code = _demo_epilogue(cfg, args)
        except UserError as e:  # e.g. no BlazeFace weights offline: the results above stand
            print(f"aunet demo: the last step (predict a video) failed: {e}", file=sys.stderr)
            code = EXIT_USER
    print(message, file=sys.stdout if ok else sys.stderr)  # last: the headline and the report
    return code


def _demo_epilogue(cfg, args: argparse.Namespace) -> int:
    """The demo's last step, as a user would do it: export a model as a bundle and predict the
    video of a held-out subject with it (stages.bundles.predict_demo_video)."""
    from stages import predict
    from stages.bundles import predict_demo_video
    from store.catalog import Catalog

    bundle, video, subject, summary = predict_demo_video(cfg, Catalog(cfg.store), _detector(args))
    print(f"\nA trained model as a bundle: {bundle}")
    print(f"predicted {video} (subject {subject}, held out from that model's training) with it:")
    print(predict.format_summary(summary))
    if summary["failed"]:
        return _report_failures(summary)
    out = summary["out"]
    print(f"table: {out / (video.stem + '.csv')}\ntimeline: {out / (video.stem + '_timeline.png')}")
    return 0


def _detector(args: argparse.Namespace) -> FacesConfig | None:
    if not args.detector_weights:
        return None
    return FacesConfig(detector=args.detector, detector_weights=Path(args.detector_weights).resolve())


def _export(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _overrides(args.set))
    from stages.bundles import export
    from store.catalog import Catalog

    folder = export(cfg, Catalog(cfg.store), args.variant, args.fold, args.out, args.name,
                    _detector(args), force=args.force)
    print(f"bundle written: {folder}")
    return 0


def _import_reference(args: argparse.Namespace) -> int:
    from stages.bundles import import_reference

    made = import_reference(Path(args.source) if args.source else None, Path(args.out),
                            head=args.head and Path(args.head), fan=args.fan and Path(args.fan),
                            aus=args.aus, name=args.name, detector=_detector(args), force=args.force)
    print("\n".join(f"bundle written: {p}" for p in made))
    return 0


def _models(args: argparse.Namespace) -> int:
    from stages.bundles import accept_edit, list_models

    if args.accept_edit:
        spec = accept_edit(Path(args.accept_edit))
        print(f"{args.accept_edit}: model.json accepted as it is now (thresholds, AUs, crop, ... of "
              f"{spec.name} signed anew); aunet predict loads it")
        if not args.folder:
            return 0
    if not args.folder:
        raise UserError("give the folder to list (aunet models DIR), or --accept-edit BUNDLE")
    found = list_models(Path(args.folder))
    if not found:
        print(f"no model bundles under {args.folder}")
    for m in found:
        if "error" in m:
            print(f"{m['path']}: REFUSED (aunet predict will not load it): {m['error']}")
            continue
        rw = "  [RANDOM-WEIGHT BACKBONE]" if m["random_weights"] else ""
        print(f"{m['name']}: {m['variant']}, {len(m['aus'])} AUs ({', '.join(m['aus'])}); "
              f"{m['source']}; trained on {m['trained_on']} ({m['fold']}){rw}\n  {m['thresholds']}"
              f"\n  {m['path']}")
        d = m["defaults"]
        print(f"  predict defaults: --temporal {d['temporal']} --tta {d['tta']} (T = {d['T']}, "
              f"crop {d['crop']} {d['crop_size']} px; FAN passes per frame: "
              f"{(3 if d['temporal'] == 'exact' else 1) * (2 if d['tta'] == 'flip' else 1)} for a "
              "temporal head)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from stages import predict

    cfg = predict.make_config(inputs=tuple(args.inputs), model=args.model, out=args.out,
                        format=args.format, faces=args.faces, temporal=args.temporal,
                        tta_flip=None if args.tta is None else args.tta == "flip",
                        sequence=args.sequence, fps=args.fps, save_aligned=args.save_aligned,
                        render=args.render, skip_existing=args.skip_existing,
                        allow_random_weights=args.allow_random_weights,
                        batch_size=args.batch_size, device=args.device,
                        runtime=args.runtime, every=args.every)
    summary = predict.run(cfg, progress=not args.quiet)
    print(predict.format_summary(summary))
    return _report_failures(summary)


def _query(args: argparse.Namespace) -> int:
    from store.catalog import Catalog
    from store.query import run_query

    print(run_query(Catalog(args.store), args.sql))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to look), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _variant(text: str) -> str:
    """A head variant by name (au_fan, au_vae, au_tdn, aunet)."""
    names = [v.value for v in Variant]
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown variant {text!r}; variants: {', '.join(names)}")
    return text


def _aus(text: str) -> list[int]:
    """AU numbers, comma-separated: 1,2,4."""
    try:
        aus = [int(a) for a in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"AU numbers are integers separated by commas, e.g. "
                                         f"1,2,4,6; got {text!r}") from None
    if any(a < 1 for a in aus) or len(set(aus)) != len(aus):
        raise argparse.ArgumentTypeError(f"AU numbers are distinct integers >= 1; got {text!r}")
    return aus


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=2")
    s.add_argument("--force", action="store_true", help="recompute even if up to date")


def _detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", default="blazeface", help="the bundle's face detector")
    p.add_argument("--detector-weights", help="its weights file (anchors and the pyramid's "
                   "second model beside it); default: face-alignment's download")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aunet", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_stage_commands, _flow_commands, _bundle_commands, _predict_command, _query_command):
        add(sub)
    return p


def _stage_commands(sub) -> None:
    """One command per stage, run directly through the runner."""
    from stages.runner import STAGES  # light: the runner imports no torch at module level

    for name in STAGES:
        s = sub.add_parser(name, help=f"run the {name} stage")
        _common(s)
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "train":
            s.add_argument("--variant", action="append", type=_variant,
                           help="au_fan, au_vae, au_tdn, aunet (repeatable; default: config)")
        if name == "evaluate":
            s.add_argument("--fold-draws", type=int, metavar="K",
                           help="your own data (folds: kfold): re-draw the folds K times, retrain "
                                "and evaluate on each, and report the spread of Avg F1")
        if name in ("train", "prior"):
            s.add_argument("--fold", action="append", type=_fold,
                           help="test fold number, or `all` for a model of every subject "
                                "(repeatable; default: the config's, else every test fold)")
        if name == "features":
            s.add_argument("--verify", action="store_true",
                           help="also decode every done shard (checksums, finite values) and "
                                "recompute the damaged ones; reads the whole store")
        s.set_defaults(func=_stage)


def _flow_commands(sub) -> None:
    """`run` and `demo`: the full pipeline as a Prefect flow."""
    r = sub.add_parser("run", help="run the full pipeline as a Prefect flow")
    _common(r)
    r.set_defaults(func=_flow)
    d = sub.add_parser("demo", help="generate the synthetic demo dataset and run the full flow on it")
    d.add_argument("--store", help="artifact folder (default: the demo config's)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--force", action="store_true")
    d.add_argument("--detector", default="blazeface", help=argparse.SUPPRESS)
    d.add_argument("--detector-weights", help="BlazeFace weights for the demo's exported bundle "
                   "(default: face-alignment's download)")
    d.set_defaults(func=_flow)


def _bundle_commands(sub) -> None:
    """`export`, `import-reference`, `models`: portable model bundles."""
    e = sub.add_parser("export", help="write a model bundle of a trained head (for aunet predict)")
    _common(e)
    e.add_argument("--variant", required=True, type=_variant, help="au_fan, au_vae, au_tdn or aunet")
    e.add_argument("--fold", required=True, type=_fold, help="its test fold, or `all`")
    e.add_argument("--out", required=True, help="the bundle folder to write (an existing "
                   "bundle of another model is replaced only with --force)")
    e.add_argument("--name", help="the bundle's name (default: dataset-variant-fold)")
    _detector_args(e)
    e.set_defaults(func=_export)
    i = sub.add_parser("import-reference", help="bundles of the paper's released AUNet models")
    i.add_argument("source", nargs="?", help="a clone of github.com/jingyang2017/AU-Net")
    i.add_argument("--out", required=True, help="folder for the bundles (one per checkpoint)")
    i.add_argument("--head", help="one released head file (instead of a clone)")
    i.add_argument("--fan", help="the FAN file (models/2dfan2.pth) with --head")
    i.add_argument("--aus", type=_aus, help="the head's AU numbers in order, e.g. 1,2,4,6,7,10,12,14,15,17,23,24")
    i.add_argument("--name", help="the bundle's name with --head")
    i.add_argument("--force", action="store_true",
                   help="replace an existing bundle of another head file")
    _detector_args(i)
    i.set_defaults(func=_import_reference)
    mo = sub.add_parser("models", help="list the model bundles in a folder")
    mo.add_argument("folder", nargs="?")
    mo.add_argument("--accept-edit", metavar="BUNDLE",
                    help="re-sign a bundle whose model.json you edited on purpose (e.g. tuned "
                         "thresholds): predict refuses an edited model.json until then")
    mo.set_defaults(func=_models)


def _predict_command(sub) -> None:
    pr = sub.add_parser("predict", help="AUs of your videos and images with a model bundle")
    pr.add_argument("inputs", nargs="+", help="video files, image files, folders (recursive)")
    pr.add_argument("--model", required=True, help="a bundle folder (aunet export / import-reference)")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--format", choices=["csv", "parquet"], default="csv")
    pr.add_argument("--faces", choices=["largest", "all"], default="largest")
    pr.add_argument("--temporal", choices=["cached", "exact"], help="default: the bundle's")
    pr.add_argument("--tta", choices=["flip", "none"], help="average with the flipped crop "
                    "(default: the bundle's)")
    pr.add_argument("--sequence", action="store_true", help="a folder's images are one video's frames")
    pr.add_argument("--fps", type=float, default=30.0, help="frame rate of image sequences")
    pr.add_argument("--save-aligned", action="store_true", help="write the aligned face crops")
    pr.add_argument("--render", action="store_true", help="also write an annotated video")
    pr.add_argument("--skip-existing", action="store_true",
                    help="skip inputs whose outputs exist for the same bundle and options")
    pr.add_argument("--allow-random-weights", action="store_true",
                    help="run a bundle made from the untrained backbone (tests, demo)")
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                    help="where the FAN and head run (auto: ONNX Runtime on the CPU when installed)")
    pr.add_argument("--every", type=int, default=1, metavar="N",
                    help="predict every Nth video frame (rows only for those; neighbours stay true)")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.set_defaults(func=_predict)


def _query_command(sub) -> None:
    q = sub.add_parser("query", help="SQL over the Parquet report tables (DuckDB)")
    q.add_argument("sql")
    q.add_argument("--store", default="artifacts", help="artifact folder (default: artifacts)")
    q.set_defaults(func=_query)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"aunet {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER
    except ValidationError as e:  # an option the settings models refuse (e.g. --detector)
        said = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        print(f"aunet {args.command}: error: {said}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # noqa: BLE001 - the machine's state in one line; anything else re-raised
        message = storage_message(e) or object_store_message(e)
        if message is None:
            raise
        print(f"aunet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
