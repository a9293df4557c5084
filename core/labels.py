"""A run's labels (issue 23): the `name`, `tags` and `note` a user gives a job, at submission
(POST /v1/jobs, sweeps) or later (PATCH /v1/jobs/{id}). They never change what runs.

Rules, checked here for every way in (the API's schemas call these and name the field):
- name: 1..200 characters after trimming, no control characters;
- tags: at most 20, each 1..40 characters of a-z 0-9 and `_ . : + / -` starting with a letter or
  digit; given in any case, kept lowercase (a tag filter then matches any spelling), duplicates dropped;
- note: at most 10,000 characters (free text, newlines allowed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_NAME, MAX_TAGS, MAX_TAG, MAX_NOTE = 200, 20, 40, 10_000
TAG = re.compile(r"[a-z0-9][a-z0-9_.:+/-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"a name has 1 to {MAX_NAME} characters")
    if _CONTROL.search(name):
        raise ValueError("a name has no control characters (newlines, tabs)")
    return name


def check_tag(tag: str) -> str:
    tag = tag.strip().lower()
    if not 1 <= len(tag) <= MAX_TAG or not TAG.fullmatch(tag):
        raise ValueError(
            f"{tag[:50]!r} is not a tag: 1 to {MAX_TAG} characters of a-z 0-9 _ . : + / - starting with a letter or digit"
        )
    return tag


def check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    return list(dict.fromkeys(check_tag(t) for t in tags))


def check_note(note: str) -> str:
    if len(note) > MAX_NOTE:
        raise ValueError(f"a note has at most {MAX_NOTE} characters")
    return note


@dataclass(frozen=True)
class Labels:
    """A job's labels as stored (already checked); None: not given."""

    name: str | None = None
    tags: list[str] | None = None
    note: str | None = None

    def columns(self) -> dict[str, Any]:
        return {"name": self.name, "tags": self.tags or None, "note": self.note}


NONE = Labels()
