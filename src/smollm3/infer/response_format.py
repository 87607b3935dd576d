"""`response_format` of a chat completion: text, `json_object`, or `json_schema` through constrained decoding.

A JSON response is generated under a JSONConstraint (constrain.py), so when it finishes with "stop" it parses and
follows the schema. The schema is checked here first, against the subset the grammar enforces:

  type (one or a list of object, array, string, number, integer, boolean, null), properties, required,
  items (one schema), enum, const, anyOf, additionalProperties (true or false), and $ref into $defs /
  definitions (inlined; recursive references are refused).

Objects get only their declared properties (when `properties` is given), so `additionalProperties` of either
value is satisfied. Annotations (title, description, default, examples, $schema, $id, $comment) are allowed and
change nothing. Every other keyword (pattern, format, minLength, minimum, minItems, oneOf, allOf, ...) would be
silently ignored by the grammar, so it is refused with a 400 that names it and where it is.
"""

from __future__ import annotations

import functools

from smollm3.infer.constrain import MAX_DEPTH, NAME_RE, JSONConstraint
from smollm3.infer.openai_api import APIError

TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "$defs", "definitions"}
CONSTRAINING = {"type", "properties", "required", "items", "enum", "const", "anyOf", "additionalProperties"}
PARAM = "response_format"


def _bad(message: str):
    raise APIError(400, f"response_format: {message}", param=PARAM)


def response_constraint(raw, think: bool):
    """-> None (plain text) or a function making a fresh JSONConstraint (one per choice: each keeps its own
    state). `think`: the output may open with a <think> block (thinking is on)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        _bad("must be an object with a 'type' ('text', 'json_object' or 'json_schema')")
    kind = raw["type"]
    allowed = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"}}.get(kind)
    if allowed is None:
        _bad(f"unknown type {kind!r}; this server supports 'text', 'json_object' and 'json_schema'")
    if set(raw) - allowed:
        _bad(f"unknown field(s) {sorted(set(raw) - allowed)} for type {kind!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return functools.partial(JSONConstraint, None, think)
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        _bad("json_schema must be an object with 'name' and 'schema'")
    extra = set(spec) - {"name", "schema", "strict", "description"}
    if extra:
        _bad(f"json_schema has unknown field(s) {sorted(extra)}")
    if not isinstance(spec.get("name"), str) or not NAME_RE.match(spec["name"]):
        _bad("json_schema.name must be 1-64 letters, digits, '_' or '-'")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        _bad("json_schema.strict must be a boolean")  # enforced either way: the grammar is always strict
    schema = spec.get("schema")
    if schema is None:
        return functools.partial(JSONConstraint, None, think)
    resolved = check_schema(schema)
    return functools.partial(JSONConstraint, resolved, think)


def check_schema(schema) -> dict:
    """The schema with its $refs inlined, or a 400 naming the first unsupported or invalid part."""
    if not isinstance(schema, dict):
        _bad("json_schema.schema must be a JSON schema object")
    if schema.get("type") != "object":
        _bad("json_schema.schema must have \"type\": \"object\" at its root (as OpenAI requires)")
    defs = {}
    for key in ("$defs", "definitions"):
        if schema.get(key) is not None:
            if not isinstance(schema[key], dict):
                _bad(f"json_schema.schema.{key} must be an object")
            defs.update({f"#/{key}/{name}": s for name, s in schema[key].items()})
    return _walk(schema, "$", defs, (), 0)


def _walk(s, path: str, defs: dict, refs: tuple, depth: int) -> dict:
    if depth > MAX_DEPTH:
        _bad(f"the schema nests deeper than {MAX_DEPTH} levels (at {path})")
    if not isinstance(s, dict):
        _bad(f"{path}: a schema must be an object (boolean schemas are not supported)")
    if "$ref" in s:
        ref = s["$ref"]
        if set(s) - {"$ref"} - ANNOTATIONS:
            _bad(f"{path}: $ref beside other keywords is not supported")
        if ref not in defs:
            _bad(f"{path}: $ref {ref!r} does not name an entry of $defs / definitions")
        if ref in refs:
            _bad(f"{path}: recursive $ref {ref!r} is not supported")
        return _walk(defs[ref], f"{path}->{ref}", defs, refs + (ref,), depth + 1)
    unknown = set(s) - CONSTRAINING - ANNOTATIONS
    if unknown:
        _bad(f"{path}: unsupported JSON schema keyword(s) {sorted(unknown)}; this server enforces "
             f"{sorted(CONSTRAINING | {'$ref'})}")
    out = {}
    t = s.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not types or any(x not in TYPES for x in types):
            _bad(f"{path}.type must be one of {sorted(TYPES)} or a non-empty list of them, got {t!r}")
        out["type"] = t
    if "anyOf" in s:
        alts = s["anyOf"]
        if set(s) & CONSTRAINING - {"anyOf"}:
            _bad(f"{path}: anyOf beside {sorted(set(s) & CONSTRAINING - {'anyOf'})} is not supported; "
                 "move them into each alternative")
        if not isinstance(alts, list) or not alts:
            _bad(f"{path}.anyOf must be a non-empty array of schemas")
        out["anyOf"] = [_walk(a, f"{path}.anyOf[{i}]", defs, refs, depth + 1) for i, a in enumerate(alts)]
        return out
    if "enum" in s or "const" in s:
        if set(s) & CONSTRAINING - {"enum", "const", "type"} or ("enum" in s and "const" in s):
            _bad(f"{path}: enum / const beside other constraints is not supported")
        values = s["enum"] if "enum" in s else [s["const"]]
        if not isinstance(values, list) or not values:
            _bad(f"{path}.enum must be a non-empty array")
        if t is not None and not all(_has_type(v, t) for v in values):
            _bad(f"{path}: enum / const values must all be of type {t!r}")
        out["enum"] = values
        return out
    props = s.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            _bad(f"{path}.properties must be an object")
        out["properties"] = {k: _walk(v, f"{path}.properties.{k}", defs, refs, depth + 1) for k, v in props.items()}
    required = s.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
            _bad(f"{path}.required must be an array of property names")
        missing = [k for k in required if k not in (props or {})]
        if missing:
            _bad(f"{path}.required names {missing}, which are not in its properties")
        out["required"] = list(required)
    extra = s.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        _bad(f"{path}.additionalProperties must be true or false (a schema there is not supported)")
    items = s.get("items")
    if items is not None:
        if not isinstance(items, dict):
            _bad(f"{path}.items must be one schema (tuple forms are not supported)")
        out["items"] = _walk(items, f"{path}.items", defs, refs, depth + 1)
    if t is None and (props is not None or required is not None or extra is not None):
        out["type"] = "object"  # the grammar reads an untyped schema as "any value": say what these keywords imply
    elif t is None and items is not None:
        out["type"] = "array"
    return out


def _has_type(v, t) -> bool:
    types = t if isinstance(t, list) else [t]
    checks = {"object": lambda: isinstance(v, dict), "array": lambda: isinstance(v, list),
              "string": lambda: isinstance(v, str), "boolean": lambda: isinstance(v, bool), "null": lambda: v is None,
              "integer": lambda: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool)}
    return any(checks[x]() for x in types)
