"""Collection rules for the whole suite (tests/ and the doctests in imgtools/)."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    """Docstring examples whose every line is marked ``+SKIP`` illustrate a call on the user's data or
    cluster; they run nothing, so they are not collected as tests (deselected, not reported as skipped)."""
    import doctest

    illustrations = [item for item in items if getattr(item, "dtest", None) is not None
                     and all(example.options.get(doctest.SKIP) for example in item.dtest.examples)]
    if illustrations:
        config.hook.pytest_deselected(items=illustrations)
        items[:] = [item for item in items if item not in illustrations]
