"""The settings form: PoolSettings ⇄ HTML form fields, with pydantic's errors placed beside their field.

Validation is PoolSettings' own (accountpool/models.py owns the rules); this module only translates. Nothing
is stored unless the whole form validates, and a refused form echoes the user's input unchanged.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Any

from accountpool.models import PoolSettings
from pydantic import ValidationError

LABELS = {
    "mode": ("Load-balance mode", "balanced: best account per request; sequential: stay on one account "
                                  "until its 5-hour usage reaches the threshold."),
    "free_first": ("Free plans first", "Spend free accounts' quota before paid ones (balanced mode)."),
    "sequential_threshold": ("Sequential threshold (%)", "5-hour used % at which sequential mode moves on."),
    "cooldown_rate_limited_s": ("Cooldown after rate limit (s)", "When the upstream gives no Retry-After."),
    "cooldown_quota_s": ("Cooldown after quota exhausted (s)", "When the upstream gives no reset time."),
    "cooldown_auth_s": ("Cooldown after auth failure / 403 (s)", ""),
    "cooldown_upstream_s": ("Cooldown after upstream error (s)", "5xx, timeouts, connection resets."),
    "cooldown_model_s": ("Cooldown of a model after model_restricted (s)", ""),
    "retention_days": ("Metrics retention (days)", "Older request and attempt rows are pruned."),
    "prefer_expiring_windows": ("Prefer expiring weekly quota", "Balanced mode, ChatGPT logins: within a plan "
                                "rank, first use a login whose weekly window resets within 24 h and will not "
                                "run out before it (use it or lose it). Never overrides cooldowns, plan order, "
                                "session affinity, pinning or sequential mode's current account."),
    "cooldown_escalation_factor": ("Cooldown escalation factor", "Each consecutive rate limit or upstream error "
                                   "multiplies the next cooldown by this (1: no escalation)."),
    "cooldown_max_s": ("Longest escalated cooldown (s)", "Escalation stops here; an upstream Retry-After can "
                       "still be longer."),
    "transient_threshold": ("Upstream errors before a cooldown", "5xx / connection failures within the window "
                            "that cool an account down (1: every one)."),
    "transient_window_s": ("Upstream error window (s)", "The window those failures are counted in."),
}
OVERRIDE_FIELDS = ("context_window", "auto_compact_token_limit")
_ROW_KEY = re.compile(r"^ov-(\d+)-(model|context_window|auto_compact_token_limit|remove)$")


@dataclass
class Field:
    name: str
    label: str
    help: str
    kind: str  # "select", "checkbox" or "number"
    options: tuple[str, ...] = ()


@dataclass
class SettingsForm:
    values: dict[str, Any]
    overrides: list[dict[str, str]]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> list[Field]:
        return scalar_fields()


def scalar_fields() -> list[Field]:
    result = []
    for name, info in PoolSettings.model_fields.items():
        if name == "model_overrides":
            continue
        label, help_text = LABELS.get(name, (name.replace("_", " "), ""))
        if typing.get_origin(info.annotation) is typing.Literal:
            result.append(Field(name, label, help_text, "select", tuple(typing.get_args(info.annotation))))
        elif info.annotation is bool:
            result.append(Field(name, label, help_text, "checkbox"))
        else:
            result.append(Field(name, label, help_text, "number"))
    return result


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def form_from_settings(settings: PoolSettings) -> SettingsForm:
    values = {f.name: getattr(settings, f.name) if f.kind == "checkbox" else _text(getattr(settings, f.name))
              for f in scalar_fields()}
    overrides = [{"model": model, **{k: _text(getattr(o, k)) for k in OVERRIDE_FIELDS}}
                 for model, o in sorted(settings.model_overrides.items())]
    return SettingsForm(values, overrides)


def parse_form(post: dict[str, str]) -> tuple[PoolSettings | None, SettingsForm]:
    """The validated settings, or None and the form (echoing the input) with an error per field."""
    values: dict[str, Any] = {}
    for f in scalar_fields():
        if f.kind == "checkbox":  # an unticked box is simply absent from the POST
            values[f.name] = post.get(f.name, "") not in ("", "0", "off")
        elif f.name in post:
            values[f.name] = post[f.name].strip()
        # A field missing from the POST altogether (a form saved before the setting existed, a script) takes its
        # default; one sent empty is an error beside the field.
    rows: dict[int, dict[str, str]] = {}
    for key, value in post.items():
        match = _ROW_KEY.match(key)
        if match:
            rows.setdefault(int(match[1]), {})[match[2]] = value.strip()
    form = SettingsForm(values, [], {})
    overrides: dict[str, dict[str, str]] = {}
    row_of_model: dict[str, int] = {}
    for index in sorted(rows):
        row = rows[index]
        entry = {"model": row.get("model", ""), **{k: row.get(k, "") for k in OVERRIDE_FIELDS}}
        if row.get("remove") or not any(entry.values()):
            continue  # removed, or the empty "add" row left empty
        position = len(form.overrides)
        form.overrides.append(entry)
        model = entry["model"]
        if not model:
            form.errors[f"ov-{position}-model"] = "A model name is required"
        elif model in overrides:
            form.errors[f"ov-{position}-model"] = f"{model!r} appears twice"
        else:
            overrides[model] = {k: entry[k] for k in OVERRIDE_FIELDS}
            row_of_model[model] = position
    data: dict[str, Any] = dict(values)
    data["model_overrides"] = overrides
    try:
        settings = PoolSettings.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            form.errors.setdefault(_error_key(error["loc"], row_of_model), _message(error))
        return None, form
    if form.errors:
        return None, form
    return settings, form


def _error_key(loc: tuple[Any, ...], row_of_model: dict[str, int]) -> str:
    if loc and loc[0] == "model_overrides" and len(loc) >= 2 and loc[1] in row_of_model:
        column = loc[2] if len(loc) >= 3 and loc[2] in OVERRIDE_FIELDS else "auto_compact_token_limit"
        return f"ov-{row_of_model[loc[1]]}-{column}"
    return str(loc[0]) if loc else "__all__"


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")
