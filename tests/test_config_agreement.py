"""Each stage's dataclass is the truth for its keys and defaults: the workflow's JSON schema agrees with it
key by key, type by type, and default by default wherever the schema states a default (a key without one
takes the dataclass's, or the preset's where the config names one)."""

import dataclasses
import types
import typing

import pytest

from dnd.baselines.ddpm import DDPMConfig, DDPMSamplingConfig
from dnd.config import load_schema
from dnd.data.demo_pdfs import DemoPdfsConfig
from dnd.data.glyphs import DemoGlyphsConfig
from dnd.data.labelled import DemoDigitsConfig, LabelledConfig
from dnd.data.pdf import RasterConfig
from dnd.data.render import RenderConfig
from dnd.data.splits import SplitConfig
from dnd.launch.settings import LaunchSettings
from dnd.metrics.classifier import ClassifierConfig
from dnd.metrics.ocr import OCRConfig
from dnd.metrics.ppl import LMConfig
from dnd.stages.arxiv_image import ArxivImageConfig
from dnd.stages.classes import ClassesConfig
from dnd.stages.gen_eval import GenEvalConfig, ReferenceConfig
from dnd.stages.pipeline_samples import PipelineSpec
from dnd.stages.recon import ReconEvalConfig
from dnd.stages.richtext import RichTextEvalConfig
from dnd.stages.sample import SampleSpec
from dnd.stages.text_image import ResizeConfig, TextImageConfig, WikiTextConfig
from dnd.stages.vae_recon import ReferenceVAEConfig
from dnd.tokenizer.losses import TokenizerLossConfig
from dnd.tokenizer.rqvae import RQVAEConfig
from dnd.tokenizer.train import TokenizerTrainConfig
from dnd.transformer.generate import SamplingConfig
from dnd.transformer.train import TransformerTrainConfig

# (schema path, dataclasses whose fields together make the node, keys of the node that are no field,
#  fields that are no key of the node): the exceptions are structural and say where the value comes from.
STAGES = [
    ("data.wiki_text", [WikiTextConfig], {}, {}),
    ("data.text_image", [TextImageConfig], {}, {}),
    ("data.text_image.render", [RenderConfig], {}, {}),
    ("data.text256", [ResizeConfig], {}, {}),
    ("data.arxiv_image", [ArxivImageConfig], {}, {}),
    ("data.arxiv_image.raster", [RasterConfig], {}, {}),
    ("data.classes", [ClassesConfig], {}, {}),
    ("data.classes.image", [LabelledConfig], {}, {}),
    ("demo.pdfs", [DemoPdfsConfig], {}, {}),
    ("demo.digits", [DemoDigitsConfig], {}, {}),
    ("demo.glyphs", [DemoGlyphsConfig], {}, {}),
    ("$defs.splits", [SplitConfig], {}, {}),
    ("tokenizers.*.model", [RQVAEConfig], {"preset": "names an RQ-VAE preset the other keys override"}, {}),
    ("tokenizers.*.loss", [TokenizerLossConfig], {}, {}),
    ("tokenizers.*.train", [TokenizerTrainConfig], {}, {}),
    ("transformers.*.train", [TransformerTrainConfig], {}, {}),
    ("sampling.*", [SamplingConfig, SampleSpec], {}, {"sampling": "SampleSpec's SamplingConfig: the node's own keys"}),
    ("evaluation.recon", [ReconEvalConfig], {"reference_vaes": "rows of their own (ReferenceVAEConfig)",
                                             "rfid_max_images": "the rule passes it as max_images for Table 1a's test set",
                                             "rocr_reference": "per test set: the rule passes its value as ocr_reference"},
     {"ocr": "metrics.ocr", "inception_weights": "metrics.inception_weights",
      "ocr_reference": "evaluation.recon.rocr_reference.<testset>"}),
    ("evaluation.recon.reference_vaes.*", [ReferenceVAEConfig], {}, {}),
    ("evaluation.reference", [ReferenceConfig], {"adm_batch": "an input file of the rule, not a setting"},
     {"inception_weights": "metrics.inception_weights"}),
    ("evaluation.generation", [GenEvalConfig], {}, {"inception_weights": "metrics.inception_weights"}),
    ("evaluation.classifier", [ClassifierConfig], {}, {}),
    ("metrics.ocr", [OCRConfig], {}, {}),
    ("richtext.ocr", [OCRConfig], {}, {}),
    ("richtext", [RichTextEvalConfig], {"runs": "the table's rows", "pipelines": "rows of their own (PipelineSpec)",
                                         "notes": "the table's notes"}, {}),
    ("richtext.language_model", [LMConfig], {}, {}),
    ("richtext.pipelines.*", [PipelineSpec], {}, {}),
    ("ddpm.*", [DDPMConfig], {"data": "the rule's input data sets", "preset": "names a DDPM preset the other keys override",
                              "sampling": "DDPMSamplingConfig"}, {}),
    ("ddpm.*.sampling", [DDPMSamplingConfig], {}, {}),
    ("launch", [LaunchSettings], {"stages": "per-stage LaunchSettings overrides"}, {}),
]

PYTHON_TO_JSON = {int: {"integer"}, float: {"number", "integer"}, bool: {"boolean"}, str: {"string"},
                  type(None): {"null"}, dict: {"object"}}


def json_types(annotation) -> set[str]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(json_types(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {"null" if value is None else "string" for value in typing.get_args(annotation)}
    if origin in (tuple, list) or annotation in (tuple, list):
        return {"array"}
    if origin is dict or dataclasses.is_dataclass(annotation):
        return {"object"}
    return PYTHON_TO_JSON[annotation]


def schema_types(prop: dict) -> set[str]:
    kind = prop.get("type")
    if kind is None:
        return {"null" if value is None else "string" for value in prop["enum"]} if "enum" in prop else {"object"}
    return set(kind) if isinstance(kind, list) else {kind}


def node_at(schema: dict, path: str) -> dict:
    node = schema
    parts = path.split(".")
    if parts[0] == "$defs":
        node, parts = schema["$defs"], parts[1:]
        node = node[parts.pop(0)]
    for part in parts:
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def field_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return dataclasses.MISSING
    return as_json(value)


def as_json(value):
    if dataclasses.is_dataclass(value):
        return {k: as_json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (tuple, list)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def schema_default(schema: dict, prop: dict):
    """A stated default; an object's `{}` means its own properties' defaults."""
    default = prop["default"]
    if default == {} and ("properties" in prop or "$ref" in prop):
        node = schema["$defs"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else prop
        return {k: schema_default(schema, p) for k, p in node["properties"].items() if "default" in p}
    return default


@pytest.mark.parametrize("path, classes, extra_keys, extra_fields", STAGES, ids=[s[0] for s in STAGES])
def test_schema_agrees_with_the_dataclasses(path, classes, extra_keys, extra_fields):
    schema = load_schema()
    props = node_at(schema, path)["properties"]
    fields = {f.name: (f, typing.get_type_hints(cls)[f.name]) for cls in classes for f in dataclasses.fields(cls)}
    fields = {name: value for name, value in fields.items() if name not in extra_fields}
    assert set(props) - set(extra_keys) == set(fields), f"{path}: keys differ from {[c.__name__ for c in classes]}"
    for name, (field, annotation) in fields.items():
        prop = props[name]
        assert schema_types(prop) <= json_types(annotation), f"{path}.{name}: schema {schema_types(prop)} vs {annotation}"
        if "default" in prop:
            expected = field_default(field)
            stated = schema_default(schema, prop)
            if isinstance(expected, dict) and isinstance(stated, dict):
                expected = {k: v for k, v in expected.items() if k in stated}
            assert stated == expected, f"{path}.{name}: the schema's default {stated!r} is not the dataclass's {expected!r}"
