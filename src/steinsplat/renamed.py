"""Old names that keep working: a name -> value table that also answers to the names it had before, with
a one-line FutureWarning naming the new spelling: SSD_PRESETS' "steinsplat" and "paper", the bench
method "ssd". (A FutureWarning is shown by default: such a name is written in a preset or on the command
line, by a user, not only by a developer. Renamed modules, `steinsplat.estimators` and `steinsplat.train`,
are shims of their own that raise a DeprecationWarning.)"""

from __future__ import annotations

import warnings
from typing import Mapping, TypeVar

V = TypeVar("V")


def warn_renamed(what: str, old: str, new: str, stacklevel: int = 3) -> None:
    """One line: `what 'old' is now 'new'` (a FutureWarning, shown once per place by default)."""
    warnings.warn(f"{what} {old!r} is now {new!r}; the old name will go", FutureWarning, stacklevel=stacklevel)


class RenamedKeys(dict):
    """A dict whose keys are the current names; `table[old]` (and `old in table`, `table.get(old)`) finds the
    entry of the new name and warns. Iterating, len() and the keys see only the current names."""

    def __init__(self, entries: Mapping[str, V], renamed: Mapping[str, str], what: str) -> None:
        super().__init__(entries)
        missing = [new for new in renamed.values() if new not in entries]
        if missing:
            raise ValueError(f"{what}: renamed to names that are not entries: {missing}")
        self.renamed, self.what = dict(renamed), what

    def current(self, name: str) -> str:
        """The current spelling of `name` (an old one warns); an unknown name is returned as it is."""
        if not dict.__contains__(self, name) and name in self.renamed:
            warn_renamed(self.what, name, self.renamed[name], stacklevel=4)
            return self.renamed[name]
        return name

    def __missing__(self, name: str):
        if name in self.renamed:
            return self[self.current(name)]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self.renamed

    def get(self, name, default=None):
        return self[name] if name in self else default
