"""Hook specifications: what a receiver plugin can implement.

A plugin is any object or module with functions marked ``@receiver.hookimpl`` and named
after a hook below. For each callback, receiver calls the hook of the event's type
(``on_<type>``) first, then ``on_event``. Implementations may be plain functions or
``async def``; plain functions run on the event loop unless marked
:func:`receiver.blocking`, which runs them in a worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from receiver.config import Config
    from receiver.events import Event, Reply
    from receiver.providers.base import Provider

PROJECT = "receiver"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_providers() -> list[type[Provider]]:  # type: ignore[empty-body]
    """Return provider classes to add (called once, when an app is built).

    The built-in Whispir, OnePoint and DIY providers are registered through this hook
    too; a channel names its provider by the class's ``name``. Two providers with one
    name are a configuration error.

    :return: A list of :class:`receiver.providers.Provider` subclasses.
    """


@hookspec
def configure(config: Config, manager: pluggy.PluginManager) -> None:
    """Read settings once, when an app is built with every plugin registered.

    :param config: The app's configuration; a plugin's own settings are in
        ``config.settings["<plugin name>"]`` (a ``[settings.<plugin name>]`` TOML table):
        an instance of the plugin's ``Settings`` struct when it declares one (see
        :data:`receiver.Secret`), else the table as a ``dict``; absent without a table.
    :param manager: The app's plugin manager: ``manager.get_plugin("opt_outs")`` is
        this app's instance of another plugin. Take only the arguments you need.

    Raise :class:`receiver.ConfigError` to refuse a bad setting: the app is not built.
    """


@hookspec
def check_ready() -> str | None:
    """Say whether this plugin can take callbacks now (``GET /readyz``).

    :return: None when ready, else a short reason (e.g. "opt-out store unreachable");
        any reason makes ``/readyz`` answer 503.
    """


@hookspec
def on_event(event: Event) -> None:
    """Called for every accepted callback, after its type's hook.

    :param event: The normalized callback.

    An exception is logged with the event id and the other plugins still run. What the
    provider is answered depends on the journal: without one (the default when mounted),
    500, so that a provider that retries will; with one (the default for ``receiver
    serve``), the event is already stored, so 200, and receiver retries it in the
    background after each of ``retry_delays``, calling only the plugins that raised,
    until it is ``dead``.
    """


@hookspec(firstresult=True)
def on_message(event: Event) -> Reply | str | None:
    """An inbound message to handle (OnePoint/DIY ``Message``, a Whispir reply).

    :param event: The normalized callback; ``event.source`` is the person's address.
    :return: A :class:`receiver.Reply`, a ``str`` (shorthand for ``Reply(text=...)``) or
        None. The first non-None result wins (also among ``async`` implementations) and
        the remaining ``on_message`` implementations are not called. OnePoint/DIY get
        the reply in the HTTP response; for Whispir it goes to :func:`send_reply`.

    Stops at first non-None result (firstresult). Bounded by ``reply_timeout`` (503;
    with the journal: 200 without a reply, and a late reply goes to :func:`send_reply`).
    """


@hookspec(firstresult=True)
def on_keyword(event: Event) -> Reply | str | None:
    """An inbound message that matched one of your keywords (OnePoint/DIY ``Keyword``).

    :param event: The normalized callback; ``event.text`` is the message.
    :return: As for :func:`on_message`: the first non-None result is the reply.

    Stops at first non-None result (firstresult). Bounded by ``reply_timeout`` (503).
    """


@hookspec(firstresult=True)
def send_reply(event: Event, reply: Reply) -> bool | None:
    """Deliver a reply that cannot go back in the HTTP response (Whispir).

    :param event: The event that was answered.
    :param reply: The reply a handler returned.
    :return: True once the reply is taken care of (e.g. sent through Whispir's
        messages API). With no implementation returning non-None, the reply is logged
        as dropped and the callback is still answered 200. If it raises, the callback
        is answered 200 too (the handlers ran); with the journal the reply is kept and
        this hook is called again after each of ``retry_delays`` (the event's handlers
        are not), so make it safe to call twice for one reply. It gets
        ``reply_timeout`` seconds; past them the delivery has failed as if it raised (a
        ``@blocking`` implementation runs on in its thread and may still deliver).

    Stops at first non-None result (firstresult).
    """


@hookspec
def on_receipt(event: Event) -> None:
    """A delivery receipt or status change (OnePoint/DIY ``Receipt``, Whispir status callback).

    :param event: The normalized callback (``event.type`` is ``receipt``).
    """


@hookspec
def on_lookup(event: Event) -> None:
    """A number lookup on the destination failed (OnePoint/DIY ``Lookup``/``Lookups``).

    :param event: The normalized callback (``event.type`` is ``lookup``).
    """


@hookspec
def on_info(event: Event) -> None:
    """An inbound INFO the platform already handled (OnePoint/DIY ``Info``).

    :param event: The normalized callback (``event.type`` is ``info``).
    """


@hookspec
def on_help(event: Event) -> None:
    """An inbound HELP the platform already handled (OnePoint/DIY ``Help``).

    :param event: The normalized callback (``event.type`` is ``help``).
    """


@hookspec
def on_stop(event: Event) -> None:
    """A recipient texted STOP and is now on the platform's stop list.

    :param event: The normalized callback (``event.type`` is ``stop``).
    """


@hookspec
def on_unstop(event: Event) -> None:
    """A recipient texted UNSTOP and left the stop list (DIY ``Unstop``).

    :param event: The normalized callback (``event.type`` is ``unstop``).
    """


@hookspec
def on_click(event: Event) -> None:
    """A tracked tiny URL was clicked; ``event.text`` is the URL.

    :param event: The normalized callback (``event.type`` is ``click``).
    """


@hookspec
def on_killed(event: Event) -> None:
    """A message was killed before it was sent (DIY ``Killed``).

    :param event: The normalized callback (``event.type`` is ``killed``).
    """


@hookspec
def on_not_killed(event: Event) -> None:
    """There was no message to kill: it may have been sent (DIY ``NotKilled``).

    :param event: The normalized callback (``event.type`` is ``not_killed``).
    """


@hookspec
def on_on_stop(event: Event) -> None:
    """The number a message was for is on stop (DIY ``OnStop``).

    :param event: The normalized callback (``event.type`` is ``on_stop``).
    """


@hookspec
def on_routing_failure(event: Event) -> None:
    """A message could not be routed (DIY ``RoutingFailure``).

    :param event: The normalized callback (``event.type`` is ``routing_failure``).
    """


@hookspec
def on_timed_out(event: Event) -> None:
    """A message timed out before it was processed (DIY ``TimedOut``).

    :param event: The normalized callback (``event.type`` is ``timed_out``).
    """


@hookspec
def on_undeliverable(event: Event) -> None:
    """Whispir could not deliver a message (undeliverable callback).

    :param event: The normalized callback (``event.type`` is ``undeliverable``).
    """


@hookspec
def on_report(event: Event) -> None:
    """A Whispir report finished generating (report completion callback).

    :param event: The normalized callback (``event.type`` is ``report``).
    """


@hookspec
def on_unknown(event: Event) -> None:
    """A callback whose type receiver does not know; ``event.provider_type`` has it.

    :param event: The normalized callback (``event.type`` is ``unknown``).
    """
