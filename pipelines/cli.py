"""``aim-video <command>``: one entry point for every stage.

Each command parses its own arguments and imports its stage lazily, so ``aim-video describe`` does
not pay for starting Ray and ``aim-video --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from aim_core.config import Config, ConfigError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``handler`` as ``aim-video name``."""
    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help, configure, handler)
        return handler
    return register


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)")


def load_config(args: argparse.Namespace) -> Config:
    return Config.load(args.config, args.overrides)


# ----------------------------------------------------------------------------------------------
# describe
# ----------------------------------------------------------------------------------------------

@command("describe", "print total/tunable parameters and GFLOPs per view (meta device)",
         add_config_args)
def _describe(args: argparse.Namespace) -> int:
    from aim_core.accounting import model_cost

    cfg = load_config(args)
    m = cfg.model
    print(f"model     {m.variant} on {m.backbone.source}:{m.backbone.name}, {m.num_frames} frames "
          f"at {m.image_size}px, {m.num_classes} classes")
    if m.variant == "aim":
        print(f"adapters  {'+'.join(m.adapter.adaptations) or 'none'}, ratio {m.adapter.ratio}, "
              f"placement {m.adapter.placement}, scale {m.adapter.scale}, "
              f"{m.adapter.temporal_adapters} temporal adapter(s)")
    print(f"views     {cfg.data.test_clips} clip(s) x {cfg.data.test_crops} crop(s)")
    print(model_cost(cfg).summary())
    return 0


# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aim-video", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, handler) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args) or 0
    except ConfigError as exc:
        print(f"aim-video {args.command}: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
