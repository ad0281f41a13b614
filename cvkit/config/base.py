"""The base class every config section derives from.

Sections forbid unknown keys, so a typo such as ``lr0`` or ``trian`` is an error that names the
key instead of a silently ignored setting.
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: strict about unknown keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
