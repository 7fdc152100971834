"""One error style for every invalid configuration: the field, the value, what is allowed, the fix."""
from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value."""


def require(ok: bool, field: str, value, allowed: str, fix: str = "") -> None:
    """Raises ConfigError("field=value is invalid: allowed ...; fix: ...") unless ok."""
    if not ok:
        msg = f"{field}={value!r} is invalid: allowed {allowed}"
        raise ConfigError(msg + (f"; fix: {fix}" if fix else ""))
