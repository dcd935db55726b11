"""lm-eval's command line with the `isodepth` model registered and the isodepth tasks included.

    python -m isodepth.evaluate run --model isodepth --model_args checkpoint=FOLDER \
        --tasks isodepth_reasoning_primitives --output_path results/

Every lm-eval subcommand and option works as documented (lm-eval 0.4.13: run, ls, validate).
When no --include_path is given, this package's task folder is added. lm-eval takes a single
include path, so a run that passes its own folder can use only that folder's tasks and
lm-eval's built-in ones.
"""

import sys

from . import TASKS_DIR, register


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    given = any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    wants_help = not args or any(a in ("-h", "--help") for a in args)
    if not given and not wants_help:
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
