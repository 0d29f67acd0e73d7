"""Command line of ``crbatch plot`` (registration only until the report lands)."""


def register(sub) -> None:
    sub.add_parser("plot", help="compare datasets or shard sets in a report (not yet available)")
