"""Placeholder until this command is built."""


def register(app) -> None:
    pass
