"""FiftyOne operators and panels: thin wrappers over the SDK, one module each."""

OPERATORS: list = []
PANELS: list = []


def register(p) -> None:
    for cls in OPERATORS + PANELS:
        p.register(cls)
