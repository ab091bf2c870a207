"""The statements the client sends, built from names and values with quoting that nothing a
caller passes can break out of.

Names are sent as quoted identifiers (``"name"``, an embedded ``"`` doubled), so a name means
exactly the string given, case included, and a quote in it stays part of the name. Strings are
sent as SQL literals (``'text'``, an embedded ``'`` doubled). Neither may hold a NUL character.
The statements follow docs/dsl.md.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from .errors import InvalidArgument

# Registry kinds as the DSL spells them, by the names this client accepts.
KINDS = {
    "entity": "ENTITY",
    "feature view": "FEATURE VIEW",
    "view": "FEATURE VIEW",
    "feature service": "FEATURE SERVICE",
    "service": "FEATURE SERVICE",
    "model": "MODEL",
}

_SHOW = {
    "ENTITY": "ENTITIES",
    "FEATURE VIEW": "FEATURE VIEWS",
    "FEATURE SERVICE": "FEATURE SERVICES",
    "MODEL": "MODELS",
}

EXPORT_FORMATS = ("parquet", "csv", "delta")


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidArgument(f"{what} may not contain a NUL character: {value!r}")
    return value


def ident(name: str, what: str = "a name") -> str:
    """A quoted identifier: ``ident('a"b')`` is ``"a""b"``."""
    _check_text(name, what)
    if name == "":
        raise InvalidArgument(f"{what} may not be empty")
    return '"' + name.replace('"', '""') + '"'


def literal(value: str, what: str = "a string") -> str:
    """A SQL string literal: ``literal("it's")`` is ``'it''s'``."""
    _check_text(value, what)
    return "'" + value.replace("'", "''") + "'"


def qualified(name: str, what: str = "a table name") -> str:
    """A table name, ``table`` or ``schema.table``, each part quoted."""
    _check_text(name, what)
    parts = name.split(".")
    if len(parts) > 2 or any(p == "" for p in parts):
        raise InvalidArgument(f"{what} must be `table` or `schema.table`, not {name!r}")
    return ".".join(ident(p, what) for p in parts)


def kind(name: str) -> str:
    """The DSL words for a registry kind (``"feature view"`` → ``FEATURE VIEW``)."""
    words = KINDS.get(" ".join(str(name).lower().replace("_", " ").split()))
    if words is None:
        raise InvalidArgument(
            f"unknown registry kind {name!r}; kinds are: entity, feature view, "
            "feature service, model"
        )
    return words


def registry_version(version: Optional[int]) -> str:
    """`` AS OF REGISTRY VERSION n``, or nothing."""
    if version is None:
        return ""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidArgument(f"a registry version is a whole number >= 0, not {version!r}")
    return f" AS OF REGISTRY VERSION {version}"


def feature(item: str) -> str:
    """One item of ``FEATURES (…)``: ``view.*``, ``view.feature`` or ``SERVICE name``."""
    _check_text(item, "a feature")
    words = item.strip()
    service = re.match(r"(?i)^service\s+(.+)$", words)
    if service:
        return "SERVICE " + ident(service.group(1).strip(), "a feature service name")
    view, dot, rest = words.partition(".")
    if not dot or not view or not rest:
        raise InvalidArgument(
            f"a feature is `view.*`, `view.feature` or `SERVICE name`, not {item!r}"
        )
    target = "*" if rest == "*" else ident(rest, "a feature name")
    return ident(view, "a feature view name") + "." + target


def labels_relation(labels: str) -> str:
    """Labels named by a table (``orders``, ``schema.orders``) or given as a query
    (``SELECT …`` / ``WITH …``, sent in parentheses)."""
    _check_text(labels, "labels")
    text = labels.strip()
    if re.match(r"(?is)^(select|with)\b", text):
        return "(" + text.rstrip().rstrip(";") + ")"
    if any(c.isspace() for c in text) or text == "":
        raise InvalidArgument(
            "labels given as a string must be a table name (no spaces) or a query starting "
            f"with SELECT or WITH, not {labels!r}"
        )
    return qualified(text, "a label table name")


def training_set(
    labels: str,
    at: str,
    features: Sequence[str],
    *,
    with_event_times: bool = False,
    with_versions: bool = False,
    knowledge_time: bool = True,
) -> str:
    """``TRAINING SET LABELS … AT … FEATURES (…) [options]``; ``labels`` is already a relation
    (see :func:`labels_relation`)."""
    if isinstance(features, str):
        features = [features]
    items = [feature(f) for f in features]
    if not items:
        raise InvalidArgument("a training set needs at least one feature")
    text = (
        f"TRAINING SET LABELS {labels} AT {ident(at, 'the label time column')} "
        f"FEATURES ({', '.join(items)})"
    )
    if with_event_times:
        text += " WITH EVENT TIMES"
    if with_versions:
        text += " WITH VERSIONS"
    if not knowledge_time:
        text += " WITHOUT KNOWLEDGE TIME"
    return text


def export(training_set_sql: str, to: str, format: Optional[str] = None) -> str:
    """``EXPORT <training set> TO '…' [FORMAT f]``."""
    text = f"EXPORT {training_set_sql} TO {literal(to, 'an export location')}"
    if format is not None:
        if format.lower() not in EXPORT_FORMATS:
            raise InvalidArgument(
                f"an export format is one of {', '.join(EXPORT_FORMATS)}, not {format!r}"
            )
        text += f" FORMAT {format.lower()}"
    return text


def show(kind_words: str, version: Optional[int]) -> str:
    """``SHOW ENTITIES | FEATURE VIEWS | … [AS OF REGISTRY VERSION n]``."""
    return f"SHOW {_SHOW[kind_words]}{registry_version(version)}"


def model_version(kind_words: str, version: Optional[str]) -> str:
    """`` VERSION 'v'`` for a model, or nothing."""
    if version is None:
        return ""
    if kind_words != "MODEL":
        raise InvalidArgument("only a model has versions (VERSION 'v')")
    return f" VERSION {literal(str(version), 'a model version')}"


def describe(kind_words: str, name: str, version: Optional[str], at: Optional[int]) -> str:
    """``DESCRIBE <kind> name [VERSION 'v'] [AS OF REGISTRY VERSION n]``."""
    return (
        f"DESCRIBE {kind_words} {ident(name)}{model_version(kind_words, version)}"
        f"{registry_version(at)}"
    )


def history(kind_words: str, name: str, version: Optional[str]) -> str:
    """``SHOW HISTORY OF <kind> name [VERSION 'v']``."""
    return f"SHOW HISTORY OF {kind_words} {ident(name)}{model_version(kind_words, version)}"


def diff(kind_words: str, name: str, version: Optional[str], start: int, end: int) -> str:
    """``SHOW DIFF OF <kind> name BETWEEN REGISTRY VERSION a AND REGISTRY VERSION b``."""
    for v in (start, end):
        registry_version(v)
    return (
        f"SHOW DIFF OF {kind_words} {ident(name)}{model_version(kind_words, version)} "
        f"BETWEEN REGISTRY VERSION {start} AND REGISTRY VERSION {end}"
    )


def drop_table(name: str) -> str:
    """``DROP TABLE "name"``."""
    return f"DROP TABLE {ident(name)}"

