# Shared helpers: config validation, the launch settings hand-off, rerun triggers.

import hashlib
import json
import os
import sys
from pathlib import Path

from snakemake.utils import validate

# The dnd package lives beside this workflow; make it importable without installing it.
sys.path.insert(0, str(Path(workflow.basedir)))
from dnd.config import check_config  # noqa: E402

SCHEMA = "../schemas/config.schema.yaml"

# One-line error naming the key first, then Snakemake's own validation (which fills defaults).
check_config(config)
validate(config, SCHEMA, set_default=True)

# How stages run reaches them through the environment, never through params: changing resources
# or the backend reruns nothing.
os.environ["DND_LAUNCH"] = json.dumps(config.get("launch", {"backend": "local"}), sort_keys=True)

PYTHON = sys.executable
DND = f"{PYTHON} -m dnd"


def stage_params(dotted):
    """The config subtree a rule depends on, as shell-quoted JSON for `--params`.

    In `params:` it is also the rerun trigger: editing the subtree reruns the rule and what follows,
    editing another stage's subtree (or `launch:`) does not.
    """
    import shlex

    return shlex.quote(json.dumps(lookup(dpath=dotted.replace(".", "/"), within=config), sort_keys=True))


def code_version(*modules):
    """A hash of the dnd modules a stage runs: editing the code reruns the stage (params trigger).

    Snakemake cannot see inside an imported package; naming the files here makes that explicit.
    """
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(workflow.basedir, module).read_bytes())
    return digest.hexdigest()[:12]
