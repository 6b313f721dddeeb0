"""``aim-video <command>``: one entry point for every stage.

Each command parses its own arguments and imports its stage lazily, so ``aim-video describe`` does
not pay for starting Ray and ``aim-video --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Callable

import yaml

from aim_core.config import Config, ConfigError

from pipelines import console

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``handler`` as ``aim-video name``."""
    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help, configure, handler)
        return handler
    return register


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``; the value is read as YAML (numbers, lists, null, strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key.path=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{key.strip()}: the value is not YAML ({exc})") from None


def add_set_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_setting,
                        metavar="KEY=VALUE", help=help)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    add_set_arg(parser, "override a config field, e.g. --set optim.lr=1e-3 (repeatable)")


def load_config(args: argparse.Namespace, **overrides: Any) -> Config:
    """The validated config with ``--set`` (and a command's own) overrides; secrets in it are
    refused (they belong in the environment)."""
    from pipelines.preflight import reject_inline_credentials

    cfg = Config.load(args.config, {**dict(args.overrides), **overrides})
    reject_inline_credentials(cfg, where=args.config)
    return cfg


# ----------------------------------------------------------------------------------------------
# describe
# ----------------------------------------------------------------------------------------------

@command("describe", "print total/tunable parameters and GMACs (the paper's GFLOPs) per view (meta device)",
         add_config_args)
def _describe(args: argparse.Namespace) -> int:
    from aim_core.accounting import model_cost
    from aim_core.video import eval_protocol

    cfg = load_config(args)
    m = cfg.model
    console.say(f"model     {m.variant} on {m.backbone.source}:{m.backbone.name}, {m.num_frames} frames "
          f"at {m.image_size}px, {m.num_classes} classes")
    if m.variant == "aim":
        console.say(f"adapters  {'+'.join(m.adapter.adaptations) or 'none'}, ratio {m.adapter.ratio}, "
              f"placement {m.adapter.placement}, scale {m.adapter.scale}, "
              f"{m.adapter.temporal_adapters} temporal adapter(s)")
    console.say(f"views     {eval_protocol(cfg)}")
    console.say(model_cost(cfg).summary())
    return 0


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--steps-per-epoch", type=int, default=1000,
                        help="optimiser steps per epoch for the lr table (default: %(default)s)")


@command("recipe", "print the effective recipe: sampling, test views, augmentation, schedule, "
         "optimiser groups (meta device)", _recipe_args)
def _recipe(args: argparse.Namespace) -> int:
    from pipelines.train.recipe import describe_recipe

    console.say(describe_recipe(load_config(args), args.steps_per_epoch))
    return 0


# ----------------------------------------------------------------------------------------------
# synth, ingest
# ----------------------------------------------------------------------------------------------

def _synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to write videos/, train.txt, val.txt, class_map.json")
    parser.add_argument("--videos-per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", help="class names (default: the demo's six)")


@command("synth", "write the synthetic temporal-order video set (real H.264 MP4s)", _synth_args)
def _synth(args: argparse.Namespace) -> int:
    from pipelines.data.synthetic import DEFAULT_CLASSES, generate_synthetic

    out = generate_synthetic(args.out, videos_per_class=args.videos_per_class, size=args.size,
                             frames=args.frames, fps=args.fps, seed=args.seed,
                             classes=args.classes or DEFAULT_CLASSES)
    console.say(f"wrote {out}/videos ({args.videos_per_class} videos per class), train.txt, val.txt, "
          f"labels.txt, class_map.json")
    return 0


def _ingest_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--out", help="output folder (default: data.shards_dir, else "
                        "<run.storage_path>/<run.name>/data)")


@command("ingest", "decode and sample the data set on Ray; Parquet shards in parquet mode, a "
         "scan and report in stream mode", _ingest_args)
def _ingest(args: argparse.Namespace) -> int:
    from pipelines.data.ingest import run_ingest

    run_ingest(_data_job_config(args), args.out)
    return 0


@command("prepare", "convert the data set once into training-friendly storage with a dataset "
         "manifest (resumable; settings in the config's prepare section)", add_config_args)
def _prepare(args: argparse.Namespace) -> int:
    from pipelines.data.prepare import run_prepare

    run_prepare(_data_job_config(args))
    return 0


def _data_job_config(args: argparse.Namespace) -> Config:
    """The config of a data job on Ray, its paths checked for the cluster and made absolute."""
    from pipelines.preflight import check_data_location
    from pipelines.runtime import absolute_paths, ensure_ray

    cfg = load_config(args)
    ensure_ray()
    check_data_location(cfg)
    return absolute_paths(cfg)


# ----------------------------------------------------------------------------------------------
# train, demo
# ----------------------------------------------------------------------------------------------

def _train_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run named run.name from its last checkpoint")
    parser.add_argument("--register", metavar="NAME", help="register the trained model in the "
                        "MLflow Model Registry (the same as --set run.register_as=NAME)")
    parser.add_argument("--alias", help="registry alias (default: run.register_alias, champion)")


@command("train", "train on Ray Train, evaluate, track in MLflow, optionally register", _train_args)
def _train(args: argparse.Namespace) -> int:
    from pipelines.train.driver import run_training

    from pipelines.tracking.runs import tracking_uri, ui_command

    registry = {"run.register_as": args.register} if args.register else {}
    if args.alias:
        registry["run.register_alias"] = args.alias
    cfg = load_config(args, **registry)
    run_training(cfg, resume=args.resume)
    console.say(f"look: {ui_command(tracking_uri(cfg))}")
    console.say(f"log:  {console.log_path()}")
    return 0


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="demo_data",
                        help="where the synthetic videos and tiny backbone go (default: %(default)s)")
    parser.add_argument("--config", default=None, help="demo config (default: the embedded one)")
    add_set_arg(parser, "override a config field (repeatable)")
    parser.add_argument("--videos-per-class", type=int, default=40)


@command("demo", "the embedded default end to end: synthetic videos, AIM vs frozen space-only, "
         "registry", _demo_args)
def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import DEMO_CONFIG, run_demo

    run_demo(args.data_dir, args.config or DEMO_CONFIG, dict(args.overrides),
             args.videos_per_class)
    return 0

# ----------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------

def _eval_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--model", required=True, metavar="URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/path, a "
                             "checkpoint folder/model.pt, or an official AIM .pth")
    parser.add_argument("--out", default="eval_results", help="folder for eval.json and "
                        "confusion.png (default: %(default)s)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="decode in this process, or with Ray Data over the cluster")


@command("eval", "multi-view top-1/top-5/mean-class accuracy of a model on the val split",
         _eval_args)
def _eval(args: argparse.Namespace) -> int:
    from pipelines.evaluation.evaluate import run_eval, summary

    metrics = run_eval(load_config(args), args.model, args.out, engine=args.engine)
    console.say(summary(metrics))
    console.say(f"wrote {args.out}/eval.json and {args.out}/confusion.png"
          + (f"; logged to MLflow run {metrics['logged_to_run']}" if "logged_to_run" in metrics
             else ""))
    return 0


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------

def _predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (or URIs)")
    parser.add_argument("--model", required=True, metavar="URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/path, a "
                             "checkpoint folder/model.pt, or an official AIM .pth")
    parser.add_argument("--topk", type=int, default=5, help="classes to print (default: 5)")
    parser.add_argument("--labels", metavar="FILE",
                        help="class names, one per line (for checkpoints without names)")
    add_set_arg(parser, "override the model's config, e.g. --set data.test_clips=1 (repeatable)")


@command("predict", "print the top classes of each video (the model's test-time views)",
         _predict_args)
def _predict(args: argparse.Namespace) -> int:
    from pipelines.evaluation.predict import run_predict

    return run_predict(args.videos, args.model, args.topk, dict(args.overrides), args.labels)


# ----------------------------------------------------------------------------------------------
# explain
# ----------------------------------------------------------------------------------------------

def _explain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", metavar="VIDEO", help="a video file (or URI)")
    parser.add_argument("--model", required=True, metavar="REF",
                        help="models:/NAME@ALIAS, runs:/ID/path, a checkpoint folder/model.pt, or "
                             "an official AIM .pth (first row)")
    parser.add_argument("--compare", metavar="REF", help="a second model for the row below, e.g. "
                        "the frozen space-only baseline (its own frame count and test config)")
    parser.add_argument("--out", default="explain_results",
                        help="folder for the PNG and GIF (default: %(default)s)")
    parser.add_argument("--frames-from-config", action="store_true",
                        help="take the first test view of the model's own sampler instead of "
                             "frames spread evenly over the whole video")


@command("explain", "last-block attention maps of a video as PNG and GIF (paper Fig. 4)",
         _explain_args)
def _explain(args: argparse.Namespace) -> int:
    from pipelines.evaluation.explain import run_explain

    result = run_explain(args.video, args.model, args.compare, args.out, args.frames_from_config)
    for label, prediction in result["predictions"].items():
        console.say(f"{label}: predicts {prediction}")
    console.say(f"wrote {result['png']} and {result['gif']}"
          + (f"; logged to MLflow run(s) {', '.join(result['logged_to_runs'])}"
             if result["logged_to_runs"] else ""))
    return 0


# ----------------------------------------------------------------------------------------------
# compare-classes
# ----------------------------------------------------------------------------------------------

def _compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("eval_a", metavar="EVAL_A", help="eval.json of model A (the baseline)")
    parser.add_argument("eval_b", metavar="EVAL_B", help="eval.json of model B")
    parser.add_argument("--names", nargs=2, default=["A", "B"], metavar=("A", "B"),
                        help="display names of the two models (default: A B)")
    parser.add_argument("--k", type=int, default=5, help="top/bottom classes to plot (default: 5)")
    parser.add_argument("--out", default="compare_results",
                        help="folder for the plots and tables (default: %(default)s)")
    parser.add_argument("--run-a", metavar="RUN_ID", help="MLflow run to log the pictures to")
    parser.add_argument("--run-b", metavar="RUN_ID", help="MLflow run to log the pictures to")


@command("compare-classes", "per-class accuracy difference B - A of two evaluations (paper Fig. 5)",
         _compare_args)
def _compare_classes(args: argparse.Namespace) -> int:
    from pipelines.evaluation.compare import format_ranking, run_compare

    try:
        result = run_compare(args.eval_a, args.eval_b, args.names, args.k, args.out,
                             args.run_a, args.run_b)
    except ValueError as exc:  # mismatched classes, not an eval.json, bad --k/--names
        console.error(f"aim-video compare-classes: {exc}")
        return 2
    console.say(format_ranking(result["top"], result["bottom"], args.names))
    console.say("wrote " + ", ".join(str(p) for p in result["files"]))
    return 0


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

def _models_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="one registered model (default: "
                        "all)")
    parser.add_argument("--promote", metavar="VERSION", help="point --alias at this version, "
                        "after showing it beside the version that has the alias now")
    parser.add_argument("--alias", default="champion", help="the alias --promote moves "
                        "(default: %(default)s)")


@command("models", "registered models: versions, aliases, scores, data set, backbone; --promote "
         "moves an alias", _models_args)
def _models(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from pipelines.tracking.models import promote, table, versions
    from pipelines.tracking.runs import configure

    configure()  # $MLFLOW_TRACKING_URI or ./mlflow.db
    client = MlflowClient()
    if args.promote:
        if not args.name:
            raise ConfigError("models --promote: name the model, e.g. aim-video models NAME "
                              "--promote 3")
        promote(client, args.name, args.promote, args.alias)
    else:
        console.say(table(versions(client, args.name)))
    return 0


# ----------------------------------------------------------------------------------------------
# sweep, report
# ----------------------------------------------------------------------------------------------

def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.1,0.5,1, got {text!r}") from None


def _sweep_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--study", choices=("components", "placement", "ratio", "data-fraction"),
                        help="a paper ablation: Table 1, 7, 8 or Fig. 3")
    parser.add_argument("--space", metavar="FILE", help="search-space YAML (grid, choice, uniform, "
                        "loguniform; num_samples); crossed with --study when both are given")
    parser.add_argument("--fractions", type=_fractions, help="data-fraction study: e.g. "
                        "0.01,0.1,1 (default: 0.01,0.05,0.1,0.25,0.5,1.0)")
    parser.add_argument("--name", help="sweep name (default: <run.name>-<study>)")
    parser.add_argument("--metric", default="val_top1", help="metric that ranks trials")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--asha", action="store_true", help="stop weak trials early (ASHA)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    parser.add_argument("--register-best", metavar="NAME", help="register the best trial's model "
                        "(the same as --set run.register_as=NAME)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted sweep")


@command("sweep", "run a paper ablation or a search space as Ray Tune trials, then report",
         _sweep_args)
def _sweep(args: argparse.Namespace) -> int:
    from pipelines.sweeps.settings import SweepConfig
    from pipelines.sweeps.sweep import plan_sweep, run_sweep

    sweep = SweepConfig.from_dict({
        "study": args.study, "space": SweepConfig.read_space(args.space) if args.space else {},
        "name": args.name, "fractions": args.fractions, "metric": args.metric, "mode": args.mode,
        "asha": args.asha, "max_concurrent": args.max_concurrent})
    best = {"run.register_as": args.register_best} if args.register_best else {}
    outcome = run_sweep(plan_sweep(load_config(args, **best), sweep), resume=args.resume)
    console.say(f"report: {outcome.report_dir}/report.md")
    return 0 if outcome.complete else 1


def _report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="<run.storage_path>/<sweep name>")
    parser.add_argument("--out", help="output folder (default: SWEEP_DIR/report)")


@command("report", "a sweep's Markdown table and accuracy plots, logged to its parent run",
         _report_args)
def _report(args: argparse.Namespace) -> int:
    from pipelines.sweeps.report import write_report

    write_report(args.sweep_dir, args.out)
    return 0


# ----------------------------------------------------------------------------------------------
# serve
# ----------------------------------------------------------------------------------------------

def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="models:/NAME@ALIAS (followed "
                        "as the alias moves) or models:/NAME/VERSION; NAME is the route")
    parser.add_argument("--host", help="where the HTTP proxy listens (default: 127.0.0.1, this "
                        "machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, help="HTTP port (default: 8000)")
    parser.add_argument("--allow-uri", action="append", metavar="PREFIX", help="a folder or URI "
                        "prefix JSON requests may name (repeatable; default: uploads only)")
    add_set_arg(parser, "another serve setting, e.g. --set max_batch_size=16 (repeatable)")


@command("serve", "serve registered models over HTTP on Ray Serve: one frozen backbone per "
         "replica, many adapter sets", _serve_args)
def _serve(args: argparse.Namespace) -> int:
    from pipelines.serving.launch import run_serve
    from pipelines.serving.settings import ServeConfig

    flags = {"host": args.host, "port": args.port, "allowed_uri_prefixes": args.allow_uri}
    given = {key: value for key, value in flags.items() if value is not None}
    return run_serve(args.models, ServeConfig.from_dict({**given, **dict(args.overrides)}))


# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="Ray's and MLflow's logs and tracebacks on the console too")
    parser = argparse.ArgumentParser(prog="aim-video", description=__doc__.splitlines()[0],
                                     parents=[verbosity])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, handler) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[verbosity])
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def expected_failure(exc: BaseException) -> bool:
    """A failure a user can cause or meet (a config, a file, a reference, a store), as opposed to
    a bug: it gets one line and exit status 2."""
    from mlflow.exceptions import MlflowException

    from aim_core.annotations import AnnotationError
    from aim_core.backbones import BackboneError
    from aim_core.checkpoint import ModelFileError
    from aim_core.video import VideoDecodeError
    from pipelines.evaluation.compare import EvalMismatchError
    from pipelines.preflight import InlineCredentialsError, StorageError
    from pipelines.serving.launch import ServeError
    from pipelines.tracking.references import ModelReferenceError
    from pipelines.train.driver import RunExistsError

    return isinstance(exc, (ConfigError, AnnotationError, InlineCredentialsError, StorageError,
                            RunExistsError, BackboneError, ModelFileError, ModelReferenceError,
                            VideoDecodeError, ServeError,
                            EvalMismatchError, MlflowException, OSError))


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 600 else text[:600] + " ..."


def main(argv: list[str] | None = None) -> int:
    from pipelines.runtime import keep_private_cluster_on_loopback, shutdown_ray

    keep_private_cluster_on_loopback()  # before anything imports Ray
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    console.start(args.command, verbose)
    code = 0
    try:
        code = args.handler(args) or 0
    except KeyboardInterrupt:
        console.error(f"aim-video {args.command}: interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes one line
        logging.getLogger("pipelines.cli").debug("failure", exc_info=True)
        if verbose:
            traceback.print_exc()
        expected = expected_failure(exc)
        hint = "" if expected or verbose else " (a bug? rerun with -v for the traceback)"
        console.error(f"aim-video {args.command}: {one_line(exc)}{hint}")
        code = 2 if expected else 1
    finally:
        if "ray" in sys.modules:
            shutdown_ray()
        console.finish()
    return code


if __name__ == "__main__":
    sys.exit(main())
