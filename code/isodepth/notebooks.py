"""Run a project notebook with papermill so that a failure never leaves stale outputs behind.

The declared outputs are deleted before the run and must all exist afterwards; any cell error
fails the run. The executed copy goes to notebooks/executed/ (ignored by git), and the kernel
is the project's own (`isodepth`, installed into the virtual environment by `make setup`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import paths

log = logging.getLogger(__name__)

KERNEL = "isodepth"


def parameters_cell(notebook: Path) -> list[dict]:
    """Return the cells tagged `parameters` (a valid notebook has exactly one)."""
    nb = json.loads(Path(notebook).read_text())
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def ensure_kernel(name: str = KERNEL) -> None:
    """Install a kernel spec for this interpreter under `name` if none exists, so notebooks run
    in the project's Python and never in whichever `python3` kernel happens to be registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        spec = None
    if spec is not None and spec.argv[0] == sys.executable:
        return
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name=f"{name} ({sys.prefix})", prefix=sys.prefix)
    log.info("installed the %s kernel spec for %s", name, sys.executable)


def run_notebook(notebook: Path, parameters: dict, outputs: list[Path], kernel: str = KERNEL) -> Path:
    import papermill

    notebook = Path(notebook)
    tagged = parameters_cell(notebook)
    if len(tagged) != 1:
        raise ValueError(f"{notebook} has {len(tagged)} cells tagged 'parameters'; it needs exactly one "
                         "so that papermill can inject values after the defaults")
    for output in outputs:
        Path(output).unlink(missing_ok=True)
    ensure_kernel(kernel)

    executed = paths.ROOT / "notebooks" / "executed" / notebook.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    log.info("running %s with %s", notebook.name, parameters)
    try:
        papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                                   kernel_name=kernel, cwd=str(paths.ROOT), progress_bar=False)
    except Exception:
        for output in outputs:
            Path(output).unlink(missing_ok=True)
        raise
    missing = [str(o) for o in outputs if not Path(o).exists()]
    if missing:
        raise RuntimeError(f"{notebook.name} finished but did not write {missing}; "
                           f"see the executed copy {executed}")
    return executed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run a notebook with papermill and check its outputs")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="parameter to inject (JSON value, or a plain string)")
    parser.add_argument("-o", "--output", action="append", default=[], type=Path,
                        help="a file the notebook must write (deleted before the run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    parameters = {}
    for name, value in args.param:
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
    run_notebook(args.notebook, parameters, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
