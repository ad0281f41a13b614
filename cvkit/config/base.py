"""The base class every config section derives from.

Sections forbid unknown keys, so a typo such as ``lr0`` or ``trian`` is an error that names the
key instead of a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: strict about unknown keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def subsection(cls, key: str) -> type[BaseModel] | None:
        """The section class of the field ``key``, or None when it is a plain value."""
        field = cls.model_fields.get(key)
        annotation = field.annotation if field else None
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        return annotation if is_section else None

    @classmethod
    def allowed_keys(cls) -> list[str]:
        """The keys this section accepts, sorted."""
        return sorted(cls.model_fields)
