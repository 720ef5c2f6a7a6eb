"""Filters kept in the URL: every page's choices are query parameters, so a link reproduces a view; the store too
(``store``, while it is not the configured one). The open tab is Streamlit's own binding, ``st.tabs(…, key="tab",
bind="query-params")``.

A value is taken from the URL only when it came from a link: ``_KNOWN`` holds what this session last wrote
for each parameter, and a parameter still holding that is the session's own echo, not a link. So a widget
shown later in a session (a key naming another filter's value, e.g. ``f"spectra_kinds:{group}"``, after that
filter changed) starts from its default as before, not from the value its predecessor left in the URL.
"""

from __future__ import annotations

from numbers import Real

import streamlit as st

_KNOWN = "_url_known"
_NOTHING = object()  # "the URL says nothing usable": keep the widget's own default
OMIT = "~"  # a multi-select's URL entry for a default option it leaves out


def _from_link(name: str) -> list[str] | None:
    """The URL's values for ``name`` if a link put them there (not this session's own writing), else None."""
    if name not in st.query_params:
        return None
    raw = st.query_params.get_all(name)
    return None if st.session_state.get(_KNOWN, {}).get(name) == raw else raw


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _match(text: str, options: list) -> object:
    """The option whose text is ``text`` (numbers also by value: ``0.50`` is 0.5), else ``_NOTHING``."""
    by_text = {_text(o): o for o in options}
    if text in by_text:
        return by_text[text]
    try:
        number = float(text)
    except ValueError:
        return _NOTHING
    numbers = [o for o in options if isinstance(o, Real) and not isinstance(o, bool)]
    return next((o for o in numbers if o == number), _NOTHING)


def _remember(name: str, value: object, default: object) -> None:
    """Write a filter's value to the URL (a default is left out, keeping links short; a multi-select that
    keeps most of its default is written as what it leaves out, ``~name``)."""
    if _same(value, default):
        new = []
    elif isinstance(value, (list, tuple)):
        new = _left_out(list(value), default) or [_text(v) for v in value] or [""]  # `name=`: nothing chosen
    else:
        new = [_text(value)]
    if st.query_params.get_all(name) != new:  # unchanged: no message to the browser
        if new:
            st.query_params[name] = new
        else:
            del st.query_params[name]
    st.session_state.setdefault(_KNOWN, {})[name] = new


def _left_out(value: list, default: object) -> list[str]:
    """``~text`` for each default option ``value`` leaves out, when that is the shorter way to say it (1 of 25
    checkpoints deselected: one entry, not 24); else []."""
    if not isinstance(default, list) or any(_text(d).startswith(OMIT) for d in default):  # a slider's is a tuple
        return []
    if not set(map(_text, value)) <= set(map(_text, default)) or 2 * len(value) <= len(default):
        return []
    return [OMIT + _text(d) for d in default if _text(d) not in set(map(_text, value))]


def _same(value: object, default: object) -> bool:
    if isinstance(value, (list, tuple)) or isinstance(default, (list, tuple)):
        return (isinstance(value, (list, tuple)) and isinstance(default, (list, tuple))
                and len(value) == len(default) and all(_same(v, d) for v, d in zip(value, default)))
    return bool(value == default) if value is not None and default is not None else value is default


def _as_list(value) -> list:
    """A multi-select's ``default``: None, one option or several."""
    if value is None:
        return []
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def choose(widget, label: str, options, *, key: str, url: str, **kwargs):
    """``widget`` (e.g. ``st.selectbox``, ``col.multiselect``, ``st.radio``, ``st.pills``) whose value lives in
    the URL query parameter ``url``: read from a link on first show (only options this page offers), written
    back on every run (left out while it is the widget's default)."""
    options = list(options)
    name = getattr(widget, "__name__", "")
    multi = name == "multiselect" or (name in ("pills", "segmented_control")
                                      and kwargs.get("selection_mode") == "multi")
    if multi:
        default = _as_list(kwargs.get("default"))
    elif name in ("pills", "segmented_control"):
        default = kwargs.get("default")
    else:
        index = kwargs.get("index", 0)
        default = options[index] if options and index is not None else None
    restored = _NOTHING
    raw = _from_link(url) if key not in st.session_state else None
    if raw is not None and multi:
        texts = [r for r in raw if r]
        if texts and all(t.startswith(OMIT) for t in texts):  # what a link leaves out of the default
            dropped = {_text(_match(t[len(OMIT):], default)) for t in texts}
            texts = [_text(d) for d in default if _text(d) not in dropped]
        picked = []
        for text in texts:
            option = _match(text, options)
            if option is not _NOTHING and option not in picked:
                picked.append(option)
        if kwargs.get("max_selections"):
            picked = picked[:kwargs["max_selections"]]
        if picked or not texts:  # `name=` alone: deliberately nothing chosen
            restored = picked
    elif raw is not None:
        if raw[-1] == "" and default is None:  # an empty choice is one this widget can show
            restored = None
        elif raw[-1] != "":
            restored = _match(raw[-1], options)
    if restored is not _NOTHING:
        st.session_state[key] = restored
        kwargs.pop("default", None)
        kwargs.pop("index", None)
    value = widget(label, options, key=key, **kwargs)
    _remember(url, list(value) if multi else value, default)
    return value


def slide(widget, label: str, low, high, value, *, key: str, url: str, **kwargs):
    """A slider (one value or a ``(lo, hi)`` range) whose value lives in the URL query parameter ``url``."""
    ranged = isinstance(value, (list, tuple))
    value = tuple(value) if ranged else value
    kind = type(low)
    restored = False
    raw = _from_link(url) if key not in st.session_state else None
    if raw is not None:
        try:
            numbers = [kind(v) for v in raw]
        except (TypeError, ValueError, OverflowError):
            numbers = []
        if len(numbers) == (2 if ranged else 1) and all(low <= v <= high for v in numbers):
            st.session_state[key] = tuple(sorted(numbers)) if ranged else numbers[0]
            restored = True
    chosen = widget(label, low, high, None if restored else value, key=key, **kwargs)
    _remember(url, chosen, value)
    return chosen


def typed(widget, label: str, value: str, *, key: str, url: str, **kwargs) -> str:
    """A text box (e.g. ``st.sidebar.text_input``) whose text lives in the URL query parameter ``url``: read from
    a link on first show (a blank one is ignored), written back on every run (left out while blank or ``value``)."""
    raw = _from_link(url) if key not in st.session_state else None
    if raw and raw[-1].strip():
        st.session_state[key] = raw[-1].strip()
    else:
        kwargs["value"] = value
    text = widget(label, key=key, **kwargs)
    _remember(url, text.strip() or value, value)
    return text
