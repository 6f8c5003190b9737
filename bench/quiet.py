"""The no-op plugin of ``bench/load.py --workers``'s ``receiver serve`` rows
(``plugins = ["bench.quiet:Quiet"]``): what ``bench.apps``' receiver scenarios load, in a
module of its own so that ``bench.apps`` imports receiver only when a factory is called."""

from receiver import Event, hookimpl


class Quiet:
    """Handles messages (no reply) and receipts, doing nothing."""

    @hookimpl
    def on_message(self, event: Event) -> str | None:
        return None

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        return None
