"""What a flow document's problems are reported as: each with the path of its field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# How the parsers report a problem: ``err(path, message)``. They go on after one, so a
# document's problems are all reported at once.
Report = Callable[[str, str], None]


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class FlowValidationError(Exception):
    """The document is not a valid flow; ``errors`` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
        )

    def as_list(self) -> list[dict[str, str]]:
        return [e.as_dict() for e in self.errors]
