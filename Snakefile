# dnd-pipeline: reproduce and extend the DnD-Transformer paper (arXiv 2410.01912).
# Read this file as a table of contents; the rules live in workflow/rules/, the logic in dnd/.

from snakemake.utils import min_version

min_version("9.0")


# The embedded demo is the default; `--configfile config/paper.yaml` (or any full config) replaces it
# rather than being merged over it. A profile's `config: launch:` alone keeps the default.
if "data" not in config:

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/transformer.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/richtext.smk"


rule all:
    input:
        rules.render_text_images.output.images,
        rules.make_text256.output.images,
        rules.rasterize_pdfs.output.images,
        rules.prepare_images.output.images,
        rules.make_table1a.output.table,
        rules.make_table1b.output.table,
        rules.make_table2.output.table,
        rules.make_table3.output.table,
        rules.plot_val_loss.output.plot,
        rules.make_richtext_table.output.table,
    default_target: True
