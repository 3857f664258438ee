"""The reviewed list of Keras tests that do not apply to ``loops.Trainer``,
each with its reason. Keys are ``file::Class::test`` prefixes (a prefix skips
every parametrization); the value is the reason, or a dict of reasons per
backend."""

from __future__ import annotations

SKIPS: dict[str, object] = {}


def reason(path: str, test: str, backend: str) -> str | None:
    short = path.replace("\\", "/").split("keras/src/")[-1] + "::" + test
    for key, why in SKIPS.items():
        if short == key or short.startswith(key + "[") or short.startswith(key + "::"):
            if isinstance(why, dict):
                return why.get(backend) or why.get("*")
            return str(why)
    return None
