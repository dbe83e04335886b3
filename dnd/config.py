"""Config loading and validation against the workflow's JSON schema (the one Snakemake validates with)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config problem, stated in one line that names the key."""


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = _key_path(error)
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in extra)
        return f"unknown config key {keys} (allowed here: {', '.join(allowed)})"
    return f"config key {_key_path(error)}: {error.message}"


def check_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Raise ConfigError with a one-line message naming the first offending key."""
    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_describe(errors[0]))
    check_validation_splits(with_defaults(config, schema))


# Where each data set's splits are set: text256 is derived from the Text-Image set's splits.
SPLITS_KEYS = {"text_image": "data.text_image.splits", "text256": "data.text_image.splits", "text_lines": "data.text_lines.splits",
               "arxiv_image": "data.arxiv_image.splits", "classes": "data.classes.splits"}


def check_validation_splits(config: dict[str, Any]) -> None:
    """Every data set a tokenizer or transformer trains on has a validation split: the best checkpoint is
    chosen on it, and a run without one would fail at its first validation, days into a cluster job."""
    users = [(f"tokenizers.{name}.train_on", dataset) for name, spec in config.get("tokenizers", {}).items()
             for dataset in spec.get("train_on", [])]
    users += [(f"transformers.{name}.data", spec["data"]) for name, spec in config.get("transformers", {}).items() if "data" in spec]
    data = config.get("data", {})
    for user, dataset in users:
        if dataset not in SPLITS_KEYS or dataset.replace("text256", "text_image") not in data:
            continue
        if dataset == "text256" and "val" not in data.get("text256", {}).get("splits", ["test"]):
            raise ConfigError(f"config key data.text256.splits: {user} trains on text256, which then has no val split; add val")
        key = SPLITS_KEYS[dataset]
        fraction = subtree(config, key).get("val_fraction", 0.05) if _has(config, key) else 0.05
        if not fraction > 0:
            raise ConfigError(f"config key {key}.val_fraction: {fraction} leaves {dataset} without the validation split "
                              f"that {user} needs (its best checkpoint is chosen on it); set it above 0")


def _has(config: dict[str, Any], dotted: str) -> bool:
    try:
        subtree(config, dotted)
    except ConfigError:
        return False
    return True


def with_defaults(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of `config` with the schema's defaults filled in, recursively (as Snakemake's validate does)."""
    schema = schema or load_schema()
    return _fill(copy.deepcopy(config), schema, schema)


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return root["$defs"][ref.split("/")[-1]]
    return node


def _fill(value: Any, node: dict[str, Any], root: dict[str, Any]) -> Any:
    node = _resolve(node, root)
    if not isinstance(value, dict):
        return value
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = _fill(value[key], sub, root)
    return value


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    config = yaml.safe_load(Path(path).read_text()) or {}
    if overrides:
        config = _merge(config, overrides)
    check_config(config)
    return with_defaults(config)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def subtree(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"config key {dotted} is missing")
        node = node[part]
    return node
