"""The public surface: a sorted __all__, one exception root, input errors that are ValueErrors."""

from __future__ import annotations

import inspect

import postkey
from postkey import mychat


def test_all_is_sorted_and_complete() -> None:
    assert postkey.__all__ == sorted(postkey.__all__)
    public = {n for n in vars(postkey) if not n.startswith("_") and n != "annotations"}
    # Submodules, imported by name (and present here once any test has imported them).
    public -= {"mychat", "cli", "testing", "worker", "gateway"}
    assert set(postkey.__all__) - {"__version__"} == public


def test_mychat_all_is_sorted_and_exists() -> None:
    assert mychat.__all__ == sorted(mychat.__all__)
    for name in mychat.__all__:
        assert hasattr(mychat, name)


def test_every_exception_has_the_one_root_and_input_errors_are_value_errors() -> None:
    errors = [
        obj
        for obj in vars(postkey).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]
    assert len(errors) >= 12
    for err in errors:
        assert issubclass(err, postkey.PostkeyError)
    for name in ("InvalidURL", "InvalidHeader", "InvalidTimeout", "InvalidBody", "InvalidMethod"):
        err = getattr(postkey, name)
        assert issubclass(err, postkey.InvalidRequest)
        assert issubclass(err, ValueError)
    assert issubclass(postkey.KeyConflict, ValueError)
    assert not issubclass(postkey.QueueFull, ValueError)


def test_every_public_object_has_a_docstring() -> None:
    for name in postkey.__all__ + [f"mychat.{n}" for n in mychat.__all__]:
        obj = getattr(mychat, name[7:]) if name.startswith("mychat.") else getattr(postkey, name)
        if callable(obj):
            assert inspect.getdoc(obj), name


def test_result_repr_shows_state() -> None:
    r = postkey.Result("k1", postkey.State.DONE, status=200, submitted_at=1.0, finished_at=1.012)
    assert repr(r) == "<Result key=k1 state=done status=200 elapsed_ms=12>"


def test_destination_policy_is_exported() -> None:
    from postkey._policy import DestinationPolicy

    assert "DestinationPolicy" in postkey.__all__
    assert postkey.DestinationPolicy is DestinationPolicy
    assert postkey.Settings(policy=postkey.DestinationPolicy.public_only()).policy.mode == (
        "public_only"
    )
