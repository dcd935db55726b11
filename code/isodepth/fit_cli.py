"""Placeholder registration for `isodepth fit`, replaced by the fitting package's command."""


def add_command(sub) -> None:
    from .fit.cli import add_command as register

    register(sub)
