"""`Headers`: a response's headers, read as httpx and requests users expect.

Names are case-insensitive; a name sent more than once keeps every value, in order. Built on
first access from the raw block a Result keeps, so results that are never looked at pay nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


class Headers:
    """Response headers: ``headers["content-type"]``, ``get``, ``get_list``, ``items``.

    ``headers[name]`` and ``get`` join repeated values with ``", "`` (RFC 9110's list form, as
    httpx does); ``get_list(name)`` gives each value on its own, which is what ``Set-Cookie``
    needs. ``items()`` lists every (name, value) pair as received, duplicates kept, in order.
    Iterating gives each name once. Immutable.
    """

    __slots__ = ("_index", "_pairs")

    def __init__(self, pairs: Sequence[tuple[str, str]] = ()) -> None:
        self._pairs = tuple(pairs)
        # Lower-case name -> its value, or a tuple of its values when sent more than once; built
        # lazily. Only str and tuples of str: the garbage collector does not track such a dict,
        # which matters when thousands of results are read (lists made every index tracked).
        self._index: dict[str, str | tuple[str, ...]] | None = None

    def _values(self) -> dict[str, str | tuple[str, ...]]:
        if self._index is None:
            index: dict[str, str | tuple[str, ...]] = {}
            for name, value in self._pairs:
                lower = name.lower()
                seen = index.get(lower)
                if seen is None:
                    index[lower] = value
                else:
                    index[lower] = (*seen, value) if isinstance(seen, tuple) else (seen, value)
            self._index = index
        return self._index

    def __getitem__(self, name: str) -> str:
        """All values of ``name`` joined with ``", "``.

        Raises:
            KeyError: no header of that name.
        """
        values = self._values().get(name.lower())
        if values is None:
            raise KeyError(name)
        return values if isinstance(values, str) else ", ".join(values)

    def get(self, name: str, default: str | None = None) -> str | None:
        """``self[name]``, or ``default`` when there is no such header."""
        try:
            return self[name]
        except KeyError:
            return default

    def get_list(self, name: str) -> list[str]:
        """Every value of ``name`` in the order received (empty if none)."""
        values = self._values().get(name.lower(), ())
        return [values] if isinstance(values, str) else list(values)

    def items(self) -> list[tuple[str, str]]:
        """Every (name, value) pair as received: original spelling, duplicates kept, in order."""
        return list(self._pairs)

    def keys(self) -> list[str]:
        """Each name once (lower case), in the order first seen."""
        return list(self._values())

    def values(self) -> list[str]:
        """``self[name]`` for each name of `keys`."""
        return [self[name] for name in self._values()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __eq__(self, other: object) -> bool:
        """Equal to Headers or a list of pairs with the same pairs (names case-insensitive), or to
        a mapping with the same names and joined values."""
        if isinstance(other, Headers):
            other_pairs = other._pairs
        elif isinstance(other, list | tuple):
            other_pairs = tuple(other)
        elif isinstance(other, Mapping):
            if not all(isinstance(k, str) for k in other):
                return False
            return {k.lower(): v for k, v in other.items()} == {k: self[k] for k in self}
        else:
            return NotImplemented
        try:
            return _folded(self._pairs) == _folded(other_pairs)
        except (TypeError, ValueError, AttributeError):
            return False  # not a list of (str, str) pairs

    __hash__ = None  # type: ignore[assignment]  # equal to lists and dicts, so not hashable

    def __repr__(self) -> str:
        return f"Headers({list(self._pairs)!r})"


def _folded(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in pairs]
