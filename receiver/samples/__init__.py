"""The sample corpus: callbacks as each provider sends them, one per documented variant.

Files are ``receiver/samples/<provider>/<variant>.<format>``, exactly as sent (bytes):
``.json`` and ``.xml`` are POST bodies, ``.form`` an ``application/x-www-form-urlencoded``
POST body, ``.query`` the query string of a GET callback. They come from the providers'
documents in ``shared/providers/`` (Whispir: "Callbacks", "Enhanced callbacks";
OnePoint: "Callbacks"; DIY Surveys: "Webhooks"), each example re-typed with made-up
numbers and names, plus the variants senders are seen to produce (letter case, spelling,
namespaces). ``receiver send`` and :mod:`receiver.testing` name them by variant
(``message``, ``stop``, ``receipt-delivered``): see :func:`find`.
"""

from __future__ import annotations

from importlib import resources
from typing import NamedTuple

__all__ = ["ALIASES", "FORMATS", "Sample", "find", "names", "providers", "read", "variants"]

FORMATS = {
    "json": ("POST", "application/json"),
    "xml": ("POST", "application/xml"),
    "form": ("POST", "application/x-www-form-urlencoded"),
    "query": ("GET", None),
}
"""File extension -> (HTTP method, Content-Type) the provider sends it with."""

_PREFERRED = ("json", "form", "xml", "query")  # which file a bare variant name picks

ALIASES = {
    "onepoint": {"message": "message_inbound"},
    "diy": {"message": "message_inbound", "receipt": "receipt_delivered"},
    "whispir": {"message": "reply_sms", "reply": "reply_sms", "status": "status_sent"},
}
"""Short names for the most used variant of each provider (``message``)."""


class Sample(NamedTuple):
    """One sample: its provider, file name, bytes and how it is sent."""

    provider: str
    file: str
    body: bytes
    method: str
    content_type: str | None

    @property
    def format(self) -> str:
        """``json``, ``xml``, ``form`` or ``query``."""
        return self.file.rpartition(".")[2]


def providers() -> list[str]:
    """The providers with samples: ``diy``, ``onepoint``, ``whispir``."""
    root = resources.files(__name__)
    return sorted(item.name for item in root.iterdir() if item.is_dir() and item.name[0] != "_")


def names(provider: str) -> list[str]:
    """Every file name of ``provider``'s samples (``stop.json``), sorted.

    Raises:
        KeyError: no samples for ``provider``.
    """
    folder = resources.files(__name__).joinpath(provider)
    if not folder.is_dir():
        raise KeyError(f"no samples for provider {provider!r}")
    return sorted(item.name for item in folder.iterdir() if item.name.rpartition(".")[2] in FORMATS)


def read(provider: str, file: str) -> bytes:
    """The bytes of one sample file (``read("onepoint", "stop.json")``), as stored."""
    return resources.files(__name__).joinpath(provider, file).read_bytes()


def find(provider: str, name: str) -> Sample:
    """The sample ``name`` of ``provider``: a file name (``stop.query``), a variant with
    dashes or underscores (``receipt-delivered``: the JSON file first, then form, XML,
    query), or an alias (``message``).

    Raises:
        KeyError: no such sample (the message lists the provider's samples).
    """
    files = names(provider)
    stem = ALIASES.get(provider, {}).get(name, name).replace("-", "_")
    candidates = [stem] if stem in files else [f"{stem}.{ext}" for ext in _PREFERRED]
    for file in candidates:
        if file in files:
            method, content_type = FORMATS[file.rpartition(".")[2]]
            return Sample(provider, file, read(provider, file), method, content_type)
    raise KeyError(f"no sample {name!r} for {provider}: one of {', '.join(variants(provider))}")


def variants(provider: str) -> list[str]:
    """The names :func:`find` takes for ``provider``: each variant once, with dashes,
    then the aliases."""
    stems = dict.fromkeys(file.rpartition(".")[0].replace("_", "-") for file in names(provider))
    return [*stems, *ALIASES.get(provider, {})]
