"""Registration of `isodepth fit` and `isodepth equivalence`, defined in the fit package."""


def add_command(sub) -> None:
    from .fit.cli import add_command as register

    register(sub)
