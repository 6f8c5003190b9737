"""receiver's first-party plugins, each off unless the app has its settings table.

- ``keyword_replies``: answers Message/Keyword callbacks from canned replies;
- ``opt_outs``: keeps the numbers that texted STOP in a SQLite file;
- ``forward``: re-posts every event as JSON to another HTTP service;
- ``whispir_replies``: sends replies to Whispir callbacks through Whispir's messages API.

Each is on in an app whose configuration has its ``[settings.<name>]`` table.
Each is a class; every app that has the table gets its own instance (two apps in one
process share nothing), registered under the name above and listed by
``receiver plugins``. ``disabled_plugins = ["<name>"]`` keeps one out even with its
table. Another plugin reaches an app's instance through the manager its ``configure``
hook gets: ``manager.get_plugin("opt_outs")``; application code through
``app.state.plugin_manager.get_plugin("opt_outs")``.
"""

from __future__ import annotations

import importlib

__all__ = ["FIRST_PARTY", "make"]

FIRST_PARTY = {
    "keyword_replies": "receiver.contrib.keyword_replies:KeywordReplies",
    "opt_outs": "receiver.contrib.opt_outs:OptOuts",
    "forward": "receiver.contrib.forward:Forward",
    "whispir_replies": "receiver.contrib.whispir_replies:WhispirReplies",
}
"""Plugin name -> ``module:class`` of each first-party plugin."""


def make(name: str) -> object:
    """A new instance of the first-party plugin ``name`` (a key of :data:`FIRST_PARTY`)."""
    module, _, cls = FIRST_PARTY[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
