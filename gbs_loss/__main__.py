"""Command line entry point: ``python -m gbs_loss <command>``.

Commands:

* ``demo``: the Generalized Batch-Shaping demonstration (learned priors under a hyperprior).
* ``msvit-demo``: the MSViT gate trained on scikit-image photographs.
* ``msvit-tradeoff``: MSViT's accuracy against tokens, the gate trained by a classifier's own loss.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

_COMMANDS = {
    "demo": ("gbs_loss.demo", "Generalized Batch-Shaping demonstration (saves a PNG)."),
    "msvit-demo": ("gbs_loss.msvit.demo", "MSViT gate on scikit-image photographs (saves a PNG)."),
    "msvit-tradeoff": ("gbs_loss.msvit.tradeoff", "MSViT accuracy against tokens on digits (table and PNGs)."),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``python -m gbs_loss <command> [options]`` to the command's own ``main``.

    Example:
        >>> from gbs_loss.__main__ import main
        >>> main(["--help"])  # doctest: +ELLIPSIS
        usage: python -m gbs_loss [-h] {demo,msvit-demo,msvit-tradeoff}
        ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m gbs_loss", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=sorted(_COMMANDS),
        help="; ".join(f"{name}: {help_}" for name, (_, help_) in sorted(_COMMANDS.items())),
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    module = importlib.import_module(_COMMANDS[args.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
