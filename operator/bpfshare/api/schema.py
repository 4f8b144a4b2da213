"""A BpfMap's or BpfProgram's validation, done from the CRD itself as the API server does it.

``bpfshare apply -f`` has no API server, and the agent reads objects it must not take on trust, so
both check each object against its CRD (``api/crds/``, the package's copy of ``crds/``) in the API
server's order, for a create with strict field validation (what ``kubectl apply`` asks for):

1. decoding: apiVersion, unknown fields (``spec.reclaimpolicy: unknown field``), metadata's types. An
   object that fails here is checked no further, as the API server answers 400 before validating;
2. status dropped (a create ignores it), nulls of non-nullable fields pruned, defaults applied;
3. metadata, with ObjectMeta's rules (the name is a DNS subdomain; labels, annotations, finalizers);
4. the structural schema: types, required, enum, bounds, lengths, patterns (RE2, as in Go), formats,
   sets and map-lists;
5. the CEL rules (``x-kubernetes-validations``), unless 3 or 4 found an error of a kind after which the
   API server skips them (a missing field, a wrong type, an unsupported value, too long, too many).

Every error names the field as the API server does (``spec.attach.tc.interfaces[0]``). The CEL rules
are evaluated by cel-python, the pure Python implementation of CEL; a result is remembered for the
same value, so the agent pays for a rule once per distinct spec rather than once per pass.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2: Go's regexp semantics, as the API server's
import yaml

# The API server's error types (k8s.io/apimachinery field.ErrorType) that bpfshare tells apart.
UNKNOWN = "unknown"  # strict decoding: a field the schema does not declare
DECODE = "decode"  # strict decoding: a value that cannot be decoded (metadata: [x], apiVersion)
REQUIRED = "required"
UNSUPPORTED = "unsupported"  # not in the enum
TOO_LONG = "too-long"  # maxLength
TOO_MANY = "too-many"  # maxItems, maxProperties
TYPE = "type"
INVALID = "invalid"
DUPLICATE = "duplicate"  # an item of a set twice, a map-list key twice
FORBIDDEN = "forbidden"
INCOMPLETE = "incomplete"  # the CEL rules were not evaluated

# After an error of one of these kinds the API server does not evaluate the CEL rules
# (apiextensions-apiserver, customResourceStrategy.Validate, hasBlockingErr).
BLOCKING = frozenset({REQUIRED, UNSUPPORTED, TOO_LONG, TOO_MANY, TYPE})

_RULE_REASONS = {
    "FieldValueInvalid": INVALID,
    "FieldValueForbidden": FORBIDDEN,
    "FieldValueRequired": REQUIRED,
    "FieldValueDuplicate": DUPLICATE,
}


@dataclass(frozen=True)
class FieldError:
    """One refusal: the field, as the API server names it, and what is wrong with it."""

    path: str  # "spec.keySize", "spec.flags[1]", "metadata.name"; "" for the object as a whole
    detail: str
    kind: str = INVALID

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}" if self.path else self.detail


@dataclass(frozen=True)
class Validated:
    """The object as the API server would store it (status dropped, defaults applied), or None if
    any error was found; and the errors, in the API server's order."""

    obj: dict[str, Any] | None
    errors: tuple[FieldError, ...]


# -- paths -------------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def child(path: str, key: str) -> str:
    """``spec`` + ``keySize`` = ``spec.keySize``; a key that is not an identifier in brackets, as
    the API server writes map keys: ``spec.nodeSelector.matchLabels[kubernetes.io/hostname]``."""
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _field_path(path: str, field_path: str) -> str:
    """A rule's ``fieldPath`` (``.keySize``, ``.a['b.c']``) below the node the rule is on."""
    for match in re.finditer(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]", field_path):
        name, quoted, index = match.groups()
        path = item(path, int(index)) if index is not None else child(path, quoted if name is None else name)
    return path


# -- how values are shown and typed ------------------------------------------------------------------

_ARTICLE = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
}
_INT64 = (-(1 << 63), (1 << 63) - 1)


def show(value: Any) -> str:
    """A value as an error quotes it: scalars as Python writes them, containers by their type."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]


def _has_type(value: Any, type_: str) -> bool:
    if type_ == "object":
        return isinstance(value, Mapping)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "integer":
        return _is_integer(value)
    if type_ == "number":
        return _is_integer(value) or (isinstance(value, float) and math.isfinite(value))
    if type_ == "boolean":
        return isinstance(value, bool)
    return True


def _same(a: Any, b: Any) -> bool:
    """JSON equality (True is not 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(type(a) is type(b) and a == b) or (_is_number(a) and _is_number(b) and a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_json(value: Any, path: str = "") -> Any:
    """The value as JSON carries it, which is what the API server sees of a YAML file that kubectl
    sends: mappings become dicts, tuples lists, and an integral float an integer (Go encodes
    float64(8) as ``8``). What JSON cannot carry raises ValueError naming the field."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path or 'the object'}: the key {key!r} is not a string")
            out[key] = as_json(sub, child(path, key))
        return out
    if isinstance(value, list | tuple):
        return [as_json(sub, item(path, i)) for i, sub in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path or 'the value'}: {value!r} is not a number JSON can carry")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if value is None or isinstance(value, str | int | bool):
        return value
    raise ValueError(f"{path or 'the value'}: a {type(value).__name__} is not a JSON value")


# -- metadata (ObjectMeta) ---------------------------------------------------------------------------

# ObjectMeta's JSON fields and how they decode (k8s.io/apimachinery/pkg/apis/meta/v1, types.go).
_OWNER_REFERENCE = {
    "apiVersion": "string",
    "kind": "string",
    "name": "string",
    "uid": "string",
    "controller": "boolean",
    "blockOwnerDeletion": "boolean",
}
_MANAGED_FIELDS_ENTRY = {
    "manager": "string",
    "operation": "string",
    "apiVersion": "string",
    "time": "time",
    "fieldsType": "string",
    "fieldsV1": "any",
    "subresource": "string",
}
_OBJECT_META: dict[str, Any] = {
    "name": "string",
    "generateName": "string",
    "namespace": "string",
    "selfLink": "string",
    "uid": "string",
    "resourceVersion": "string",
    "generation": "integer",
    "creationTimestamp": "time",
    "deletionTimestamp": "time",
    "deletionGracePeriodSeconds": "integer",
    "labels": {"string": "string"},
    "annotations": {"string": "string"},
    "ownerReferences": [_OWNER_REFERENCE],
    "finalizers": ["string"],
    "managedFields": [_MANAGED_FIELDS_ENTRY],
}
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _decode(value: Any, shape: Any, path: str, errors: list[FieldError]) -> None:
    """Go's encoding/json into ObjectMeta, strictly: null is the zero value, anything else must fit."""
    if value is None or shape == "any":
        return
    if isinstance(shape, dict) and set(shape) == {"string"}:  # map[string]string
        if not isinstance(value, Mapping):
            errors.append(FieldError(path, f"must be an object of strings, not {show(value)}", DECODE))
            return
        for key, sub in value.items():
            if not isinstance(sub, str):
                errors.append(FieldError(child(path, key), f"must be a string, not {show(sub)}", DECODE))
        return
    if isinstance(shape, dict):  # a struct
        if not isinstance(value, Mapping):
            errors.append(FieldError(path, f"must be an object, not {show(value)}", DECODE))
            return
        for key, sub in value.items():
            if key not in shape:
                errors.append(FieldError(child(path, key), "unknown field", UNKNOWN))
            else:
                _decode(sub, shape[key], child(path, key), errors)
        return
    if isinstance(shape, list):
        if not isinstance(value, list):
            errors.append(FieldError(path, f"must be a list, not {show(value)}", DECODE))
            return
        for i, sub in enumerate(value):
            _decode(sub, shape[0], item(path, i), errors)
        return
    if shape == "time":
        if not isinstance(value, str) or not _RFC3339.fullmatch(value):
            errors.append(FieldError(path, f"must be an RFC 3339 time, not {show(value)}", DECODE))
        return
    if not _has_type(value, shape):
        errors.append(FieldError(path, f"must be {_ARTICLE[shape]}, not {show(value)}", DECODE))


# k8s.io/apimachinery/pkg/util/validation: IsDNS1123Subdomain, IsQualifiedName, IsValidLabelValue.
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_ANNOTATIONS_LIMIT = 256 * 1024


def subdomain_problem(name: str) -> str | None:
    if len(name) > 253:
        return "must be no more than 253 characters"
    if not DNS1123_SUBDOMAIN.fullmatch(name):
        return (
            "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _qualified_name_problem(name: str) -> str | None:
    prefix, slash, rest = name.rpartition("/")
    if slash and (not prefix or subdomain_problem(prefix)):
        return f"{name!r}: the prefix before '/' must be a DNS subdomain"
    if not rest or len(rest) > 63 or not _QUALIFIED_NAME.fullmatch(rest):
        return (
            f"{name!r}: the name must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _check_metadata(meta: Mapping[str, Any], errors: list[FieldError]) -> None:
    """ValidateObjectMeta for a cluster-scoped custom resource (the namespace, if any, is ignored)."""
    name, generate = meta.get("name") or "", meta.get("generateName") or ""
    if not name and not generate:
        errors.append(FieldError("metadata.name", "required (name or generateName)", REQUIRED))
    elif name and (problem := subdomain_problem(name)):
        errors.append(FieldError("metadata.name", f"{name!r} {problem}", INVALID))
    if generate and (problem := subdomain_problem(generate.rstrip("-") + ("a" if generate.endswith("-") else ""))):
        errors.append(FieldError("metadata.generateName", f"{generate!r} {problem}", INVALID))
    for key, value in (meta.get("labels") or {}).items():
        if problem := _qualified_name_problem(key):
            errors.append(FieldError("metadata.labels", problem, INVALID))
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            errors.append(
                FieldError(
                    "metadata.labels",
                    f"{value!r}: a label value must be at most 63 letters, digits, '-', '_' or '.', "
                    "starting and ending with a letter or digit",
                    INVALID,
                )
            )
    annotations = meta.get("annotations") or {}
    for key in annotations:
        if problem := _qualified_name_problem(key.lower()):
            errors.append(FieldError("metadata.annotations", problem, INVALID))
    if sum(len(k) + len(v) for k, v in annotations.items()) > _ANNOTATIONS_LIMIT:
        errors.append(FieldError("metadata.annotations", "may not be more than 256 KiB in total", TOO_LONG))
    for finalizer in meta.get("finalizers") or []:
        if problem := _qualified_name_problem(finalizer):
            errors.append(FieldError("metadata.finalizers", problem, INVALID))


# -- the structural schema ---------------------------------------------------------------------------


def _unknown_fields(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    """What pruning would drop, which strict field validation refuses (nothing is dropped silently)."""
    if isinstance(value, Mapping) and schema.get("type", "object") == "object":
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or extra is True
        for key, sub in value.items():
            if key in properties:
                _unknown_fields(sub, properties[key], child(path, key), errors)
            elif isinstance(extra, Mapping):
                _unknown_fields(sub, extra, child(path, key), errors)
            elif not keep:
                errors.append(FieldError(child(path, key), "unknown field", UNKNOWN))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, sub in enumerate(value):
            _unknown_fields(sub, schema["items"], item(path, i), errors)


def _default(value: Any, schema: Mapping[str, Any]) -> None:
    """Prune nulls of non-nullable fields, then apply defaults, as the API server does on decoding."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if key in value and value[key] is None and not sub.get("nullable"):
                del value[key]
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, sub_value in list(value.items()):
            sub = properties.get(key, extra)
            if not isinstance(sub, Mapping):
                continue
            if sub_value is None and key not in properties and not sub.get("nullable"):
                if "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                else:
                    del value[key]  # a map's null value too (spec.maps: {a: null} is {})
                continue
            _default(sub_value, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for sub_value in value:
            _default(sub_value, schema["items"])


def _bounds(value: float, schema: Mapping[str, Any]) -> str | None:
    low, high = schema.get("minimum"), schema.get("maximum")
    below = low is not None and (value <= low if schema.get("exclusiveMinimum") else value < low)
    above = high is not None and (value >= high if schema.get("exclusiveMaximum") else value > high)
    if not below and not above:
        return None
    if low is not None and high is not None:
        return f"{value} is out of range [{low}, {high}]"
    if below:
        return f"{value} is less than the minimum {low}"
    return f"{value} is more than the maximum {high}"


@cache
def _pattern(pattern: str) -> Any:
    return re2.compile(pattern)


def _format_problem(value: str, format_: str) -> str | None:
    if format_ == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return "must be base64"
    elif format_ in ("date-time", "datetime") and not _RFC3339.fullmatch(value):
        return "must be an RFC 3339 time"
    return None


def _check(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    """The structural schema's checks of one value and, recursively, of what it holds."""
    if value is None:
        if not schema.get("nullable"):
            errors.append(FieldError(path, f"must be {_ARTICLE.get(schema.get('type', ''), 'set')}, not null", TYPE))
        return
    type_ = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (_is_integer(value) or isinstance(value, str)):
            errors.append(FieldError(path, f"must be an integer or a string, not {show(value)}", TYPE))
            return
    elif type_ and not _has_type(value, type_):
        errors.append(FieldError(path, f"must be {_ARTICLE[type_]}, not {show(value)}", TYPE))
        return
    if "enum" in schema and not any(_same(value, allowed) for allowed in schema["enum"]):
        allowed = ", ".join(str(a) for a in schema["enum"])
        errors.append(FieldError(path, f"unsupported value {show(value)} (one of: {allowed})", UNSUPPORTED))
    if _is_number(value) and (problem := _bounds(value, schema)):
        errors.append(FieldError(path, problem, INVALID))
    if isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif isinstance(value, list):
        _check_list(value, schema, path, errors)
    elif isinstance(value, Mapping):
        _check_object(value, schema, path, errors)


def _check_string(value: str, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    # The first of maxLength, minLength, pattern that fails, as kube-openapi reports it.
    longest, shortest = schema.get("maxLength"), schema.get("minLength")
    if longest is not None and len(value) > longest:  # characters (runes), as the API server counts
        errors.append(FieldError(path, f"too long: {len(value)} characters, at most {longest}", TOO_LONG))
    elif shortest is not None and len(value) < shortest:
        detail = "must not be empty" if shortest == 1 else f"too short: {len(value)} characters, at least {shortest}"
        errors.append(FieldError(path, detail, INVALID))
    elif "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        errors.append(FieldError(path, f"{show(value)} does not match {schema['pattern']}", INVALID))
    if "format" in schema and (problem := _format_problem(value, schema["format"])):
        errors.append(FieldError(path, f"{show(value)} {problem}", INVALID))


def _check_list(value: list[Any], schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    most, fewest = schema.get("maxItems"), schema.get("minItems")
    if most is not None and len(value) > most:
        errors.append(FieldError(path, f"too many items: {len(value)}, at most {most}", TOO_MANY))
    if fewest is not None and len(value) < fewest:
        errors.append(FieldError(path, f"must have at least {fewest} item{'s' if fewest > 1 else ''}", INVALID))
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, sub in enumerate(value):
            _check(sub, items, item(path, i), errors)
    # A value given again is named once, at its second place (apiextensions' validateListSetsAndMaps).
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        for i, sub in enumerate(value):
            if sum(_same(sub, earlier) for earlier in value[:i]) == 1:
                errors.append(FieldError(item(path, i), f"duplicate value {show(sub)}", DUPLICATE))
    elif list_type == "map":
        names = schema.get("x-kubernetes-list-map-keys") or []
        keys = [[sub.get(k) for k in names] if isinstance(sub, Mapping) else None for sub in value]
        for i, key in enumerate(keys):
            if key is not None and sum(_same(key, earlier) for earlier in keys[:i] if earlier is not None) == 1:
                shown = ", ".join(f"{k}={show(v)}" for k, v in zip(names, key, strict=True))
                errors.append(FieldError(item(path, i), f"duplicate entry ({shown})", DUPLICATE))


def _check_object(value: Mapping[str, Any], schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    most, fewest = schema.get("maxProperties"), schema.get("minProperties")
    if most is not None and len(value) > most:
        errors.append(FieldError(path, f"too many entries: {len(value)}, at most {most}", TOO_MANY))
    if fewest is not None and len(value) < fewest:
        errors.append(FieldError(path, f"must have at least {fewest} entries", INVALID))
    for key in schema.get("required") or []:
        if key not in value:
            errors.append(FieldError(child(path, key), "required", REQUIRED))
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, sub in value.items():
        sub_schema = properties.get(key, extra)
        if isinstance(sub_schema, Mapping):
            _check(sub, sub_schema, child(path, key), errors)


# -- CEL ---------------------------------------------------------------------------------------------

# cel-python logs every evaluation error; here they are the object's field errors, reported as such.
logging.getLogger("celpy").setLevel(logging.CRITICAL)


@cache
def _environment() -> Any:
    import celpy

    return celpy.Environment()


@cache
def _program(rule: str) -> Any:
    environment = _environment()
    return environment.program(environment.compile(rule))


@lru_cache(maxsize=8192)
def evaluate(rule: str, self_json: str) -> bool | str:
    """A rule's result for ``self`` (as JSON text): True, False, or why it could not be evaluated."""
    import celpy
    from celpy.adapter import json_to_cel
    from celpy.evaluation import CELEvalError, CELUnsupportedError

    try:
        result = _program(rule).evaluate({"self": json_to_cel(json.loads(self_json))})
    except (CELEvalError, CELUnsupportedError) as exc:
        return _cel_error(exc)
    if isinstance(result, CELEvalError):
        return _cel_error(result)
    if isinstance(result, bool | celpy.celtypes.BoolType):
        return bool(result)
    return f"the rule gives {type(result).__name__}, not a bool"


def _cel_error(exc: Exception) -> str:
    """The innermost reason of a cel-python error: "no such member in mapping: 'type'"."""
    args: Any = exc.args
    while args and isinstance(args[-1], tuple) and args[-1]:
        inner = args[-1]
        if isinstance(inner[0], str) and len(inner) == 1:
            return str(inner[0])
        args = inner
    return str(args[0]) if args else type(exc).__name__


def _rules(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for rule in schema.get("x-kubernetes-validations") or []:
        # A transition rule compares with the stored object (oldSelf): there is none on a create.
        if not re.search(r"\boldSelf\b", str(rule.get("rule", ""))):
            yield rule


def _check_rules(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError], cel_self: Any) -> None:
    """Every rule on every node that has a value, ``self`` being that value."""
    if value is None:
        return
    rules = list(_rules(schema))
    if rules:
        text = json.dumps(cel_self, sort_keys=True, separators=(",", ":"))
        for rule in rules:
            outcome = evaluate(str(rule["rule"]), text)
            message = str(rule.get("message") or f"failed rule: {rule['rule']}")
            if outcome is True:
                continue
            if outcome is False:
                where = _field_path(path, str(rule["fieldPath"])) if rule.get("fieldPath") else path
                kind = _RULE_REASONS.get(str(rule.get("reason", "FieldValueInvalid")), INVALID)
                if rule.get("messageExpression"):
                    message = _message(str(rule["messageExpression"]), text) or message
                errors.append(FieldError(where, message, kind))
            else:
                errors.append(FieldError(path, f"{message} (the rule could not be evaluated: {outcome})", INVALID))
    if isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = properties.get(key, extra)
            if isinstance(sub_schema, Mapping):
                _check_rules(sub, sub_schema, child(path, key), errors, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, sub in enumerate(value):
            _check_rules(sub, schema["items"], item(path, i), errors, sub)


def _message(expression: str, self_json: str) -> str | None:
    """A rule's messageExpression, if it gives a non-empty string (else the API server uses message)."""
    from celpy.adapter import json_to_cel
    from celpy.celparser import CELParseError
    from celpy.evaluation import CELEvalError, CELUnsupportedError

    try:
        result = _program(expression).evaluate({"self": json_to_cel(json.loads(self_json))})
    except (CELEvalError, CELUnsupportedError, CELParseError):
        return None
    return str(result) if isinstance(result, str) and result.strip() else None


# -- the CRDs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crd:
    """One CRD's served versions and names, read from the package's copy of crds/."""

    group: str
    kind: str
    list_kind: str
    plural: str
    schemas: Mapping[str, Mapping[str, Any]]  # apiVersion -> openAPIV3Schema

    @classmethod
    def load(cls, crd: Mapping[str, Any]) -> Crd:
        spec = crd["spec"]
        names = spec["names"]
        schemas = {
            f"{spec['group']}/{version['name']}": version["schema"]["openAPIV3Schema"]
            for version in spec["versions"]
            if version.get("served")
        }
        list_kind = names.get("listKind", f"{names['kind']}List")
        return cls(spec["group"], names["kind"], list_kind, names["plural"], schemas)

    def validate(self, obj: Any) -> Validated:
        """Check ``obj`` as a create of this kind with strict field validation (see the module doc)."""
        errors: list[FieldError] = []
        if not isinstance(obj, Mapping):
            return Validated(None, (FieldError("", f"must be an object, not {show(obj)}", DECODE),))
        try:
            obj = as_json(obj)
        except ValueError as exc:
            return Validated(None, (FieldError("", str(exc), DECODE),))
        # 1. decoding
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        schema = self.schemas.get(api_version) if isinstance(api_version, str) else None
        if schema is None:
            expected = " or ".join(self.schemas)
            errors.append(FieldError("apiVersion", f"must be {expected}, not {show(api_version)}", DECODE))
        if not isinstance(kind, str):
            errors.append(FieldError("kind", f"must be a string, not {show(kind)}", DECODE))
        _decode(obj.get("metadata"), _OBJECT_META, "metadata", errors)
        if schema is None:
            return Validated(None, tuple(errors))
        for key, value in obj.items():
            if key in ("apiVersion", "kind", "metadata"):
                continue
            if key not in (schema.get("properties") or {}):
                errors.append(FieldError(key, "unknown field", UNKNOWN))
            else:
                _unknown_fields(value, schema["properties"][key], key, errors)
        if errors:
            return Validated(None, tuple(errors))
        # 2. what a create stores
        obj.pop("status", None)
        meta = obj.get("metadata") or {}
        obj["metadata"] = meta
        # metadata follows ObjectMeta's rules, not the schema's (which may only name metadata.name)
        root = {**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}}
        body = {k: v for k, v in obj.items() if k != "metadata"}
        _default(body, root)
        obj = {k: meta if k == "metadata" else body[k] for k in obj if k == "metadata" or k in body} | body
        # 3., 4.
        if kind != self.kind:
            errors.append(FieldError("kind", f"must be {self.kind}, not {show(kind)}", INVALID))
        _check_metadata(meta, errors)
        _check(body, root, "", errors)
        # 5. CEL, as the API server does, only if nothing above stops it
        if any(e.kind in BLOCKING for e in errors):
            errors.append(
                FieldError(
                    "",
                    "the CRD's x-kubernetes-validations rules were not checked: they are once the errors above"
                    " are corrected",
                    INCOMPLETE,
                )
            )
        else:
            # At the root a rule sees of metadata only name and generateName, as on the API server.
            cel_meta = {k: meta[k] for k in ("name", "generateName") if k in meta}
            if not meta.get("name") and meta.get("generateName"):
                # The API server has made the name up by now: generateName and 5 random characters.
                cel_meta["name"] = f"{meta['generateName']}xxxxx"
            _check_rules(obj, schema, "", errors, {**body, "metadata": cel_meta})
        return Validated(None if errors else obj, tuple(errors))


@cache
def crds() -> Mapping[str, Crd]:
    """kind -> Crd for every CRD shipped in ``bpfshare/api/crds``."""
    found: dict[str, Crd] = {}
    folder = resources.files("bpfshare.api") / "crds"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            # libyaml's loader where PyYAML has it: the pure-Python one took a quarter of a new agent's
            # first rollout for these four files.
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            crd = Crd.load(yaml.load(entry.read_text(), Loader=loader))
            found[crd.kind] = crd
    return found


def warm() -> None:
    """Pay the one-time costs of validation now (the CRDs read, the CEL parser built, every rule
    compiled) rather than in the first pass over resources, where they were most of a new agent's
    CPU for its first rollout (tests/logic/test_validation.py checks that it compiles every rule)."""
    for crd in crds().values():
        for schema in crd.schemas.values():
            for rule in _rules_of(schema):
                _program(rule)


def _rules_of(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for rule in node.get("x-kubernetes-validations") or ():
            yield str(rule["rule"])
        for value in node.values():
            yield from _rules_of(value)
    elif isinstance(node, list):
        for value in node:
            yield from _rules_of(value)


def validate(obj: Any, kind: str) -> Validated:
    """Check ``obj`` as the API server checks a create of ``kind`` (BpfMap, BpfProgram)."""
    return crds()[kind].validate(obj)
