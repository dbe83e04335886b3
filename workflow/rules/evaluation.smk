# ------------------------------------------------------------------ class-conditional evaluation: Tables 2 and 3


rule compute_reference:
    input:
        source=reference_source(),
    output:
        reference="results/metrics/reference/classes.npz",
    params:
        cfg=reference_params(),
        code=command_code_version("compute-reference"),
    log:
        "logs/compute_reference/classes.log",
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd compute-reference --code-version {params.code} --params {params.cfg}"
        " --source {input.source} --out {output.reference} > {log} 2>&1"


rule train_classifier:
    input:
        dataset=DATASETS["classes"],
    output:
        classifier="results/metrics/classifier/classes.pt",
    params:
        cfg=stage_params("evaluation.classifier"),
        code=command_code_version("train-classifier"),
    log:
        "logs/train_classifier/classes.log",
    benchmark:
        "results/benchmarks/train_classifier/classes.tsv"
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd train-classifier --code-version {params.code} --params {params.cfg}"
        " --dataset {input.dataset} --out {output.classifier} > {log} 2>&1"


rule evaluate_generation:
    input:
        samples=rules.sample_images.output.samples,
        reference=rules.compute_reference.output.reference,
        classifier=demo_classifier_input,
    output:
        metrics="results/metrics/gen/{model}/{sampling}.json",
    params:
        cfg=generation_eval_params(),
        classifier=lambda wildcards, input: f"--classifier {input.classifier}" if input.classifier else "",
        code=command_code_version("evaluate-generation"),
    log:
        "logs/evaluate_generation/{model}/{sampling}.log",
    benchmark:
        "results/benchmarks/evaluate_generation/{model}/{sampling}.tsv"
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd evaluate-generation --code-version {params.code} --params {params.cfg}"
        " --samples {input.samples} --reference {input.reference} {params.classifier}"
        " --out {output.metrics} > {log} 2>&1"


rule make_table2:
    input:
        metrics=generation_metrics("table2"),
    output:
        table=report("results/table2.csv", caption="../report/table2.rst", category="Tables 2 and 3"),
        plot=report("results/table2.png", caption="../report/table2.rst", category="Tables 2 and 3"),
    params:
        cfg=table_params("table2"),
        code=command_code_version("make-generation-table"),
    log:
        "logs/make_table2.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd make-generation-table --code-version {params.code} --table table2 --params {params.cfg} --metrics {input.metrics} --out {output.table} > {log} 2>&1"


rule make_table3:
    input:
        metrics=generation_metrics("table3"),
    output:
        table=report("results/table3.csv", caption="../report/table3.rst", category="Tables 2 and 3"),
        plot=report("results/table3.png", caption="../report/table3.rst", category="Tables 2 and 3"),
    params:
        cfg=table_params("table3"),
        code=command_code_version("make-generation-table"),
    log:
        "logs/make_table3.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd make-generation-table --code-version {params.code} --table table3 --params {params.cfg} --metrics {input.metrics} --out {output.table} > {log} 2>&1"


# Is a variant under-trained? Validation loss per depth against steps of Table 3's trained variants.
rule plot_val_loss:
    input:
        histories=table3_val_histories,
    output:
        table="results/val_loss.csv",
        plot=report("results/val_loss.png", caption="../report/val_loss.rst", category="Tables 2 and 3"),
    params:
        cfg=table_params("table3"),
        code=command_code_version("plot-val-loss"),
    log:
        "logs/plot_val_loss.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd plot-val-loss --code-version {params.code} --params {params.cfg} --histories {input.histories} --out {output.table} > {log} 2>&1"
