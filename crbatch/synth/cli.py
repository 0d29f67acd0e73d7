"""Command line of ``crbatch synth`` (placeholder registration, filled in by the generator)."""


def register(sub) -> None:
    sub.add_parser("synth", help="write synthetic DiVertAnalysis-like inputs")
