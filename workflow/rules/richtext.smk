# ------------------------------------------------------------------ rich-text generation: PPL-OCR and the DDPM baseline


wildcard_constraints:
    ddpm=name_pattern(config.get("ddpm", {})),
    pipeline=name_pattern(richtext_pipelines()),


rule fit_language_model:
    input:
        dataset=richtext_dataset,
    output:
        lm="results/richtext/language_model.pkl",
    params:
        cfg=stage_params("richtext.language_model"),
        code=command_code_version("fit-language-model"),
    log:
        "logs/fit_language_model.log",
    benchmark:
        "results/benchmarks/fit_language_model.tsv"
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd fit-language-model --code-version {params.code} --params {params.cfg}"
        " --dataset {input.dataset} --out {output.lm} > {log} 2>&1"


rule train_ddpm:
    input:
        datasets=ddpm_datasets,
    output:
        model="results/ddpm/{ddpm}/model.pt",
    params:
        cfg=ddpm_params,
        code=command_code_version("train-ddpm"),
    log:
        "logs/train_ddpm/{ddpm}.log",
    benchmark:
        "results/benchmarks/train_ddpm/{ddpm}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd train-ddpm --code-version {params.code} --name {wildcards.ddpm} --params {params.cfg}"
        " --datasets {input.datasets} --out {output.model} > {log} 2>&1"


rule sample_ddpm:
    input:
        model=rules.train_ddpm.output.model,
    output:
        samples=directory("results/samples/{ddpm}/ddpm"),
    params:
        cfg=ddpm_sampling_params,
        code=command_code_version("sample-ddpm"),
    log:
        "logs/sample_ddpm/{ddpm}.log",
    benchmark:
        "results/benchmarks/sample_ddpm/{ddpm}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd sample-ddpm --code-version {params.code} --name {wildcards.ddpm} --params {params.cfg}"
        " --model {input.model} --out {output.samples} > {log} 2>&1"


rule sample_pipeline:
    output:
        samples=directory("results/samples/{pipeline}/pipeline"),
    params:
        cfg=pipeline_params,
        code=command_code_version("sample-pipeline"),
    log:
        "logs/sample_pipeline/{pipeline}.log",
    benchmark:
        "results/benchmarks/sample_pipeline/{pipeline}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd sample-pipeline --code-version {params.code} --name {wildcards.pipeline} --params {params.cfg}"
        " --out {output.samples} > {log} 2>&1"


rule evaluate_richtext:
    input:
        samples="results/samples/{model}/{sampling}",
        lm=rules.fit_language_model.output.lm,
    output:
        metrics="results/metrics/richtext/{model}/{sampling}.json",
    params:
        cfg=richtext_eval_params(),
        code=command_code_version("evaluate-richtext"),
    log:
        "logs/evaluate_richtext/{model}/{sampling}.log",
    benchmark:
        "results/benchmarks/evaluate_richtext/{model}/{sampling}.tsv"
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd evaluate-richtext --code-version {params.code} --params {params.cfg}"
        " --samples {input.samples} --lm {input.lm} --model-name {wildcards.model} --sampling-name {wildcards.sampling}"
        " --out {output.metrics} > {log} 2>&1"


rule evaluate_richtext_reference:
    input:
        dataset=richtext_dataset,
        lm=rules.fit_language_model.output.lm,
    output:
        metrics="results/metrics/richtext/reference.json",
    params:
        cfg=richtext_eval_params(),
        code=command_code_version("evaluate-richtext"),
    log:
        "logs/evaluate_richtext/reference.log",
    benchmark:
        "results/benchmarks/evaluate_richtext/reference.tsv"
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd evaluate-richtext --code-version {params.code} --params {params.cfg}"
        " --reference-dataset {input.dataset} --lm {input.lm} --out {output.metrics} > {log} 2>&1"


rule make_richtext_table:
    input:
        reference=rules.evaluate_richtext_reference.output.metrics,
        metrics=richtext_metrics,
        samples=richtext_samples,
        benchmarks=richtext_train_benchmarks,
    output:
        table=report("results/richtext.csv", caption="../report/richtext.rst", category="Rich text"),
        plot=report("results/richtext.png", caption="../report/richtext.rst", category="Rich text"),
        grids=report("results/richtext_grids.png", caption="../report/samples.rst", category="Rich text"),
    params:
        cfg=richtext_table_params(),
        code=command_code_version("make-richtext-table"),
    log:
        "logs/make_richtext_table.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd make-richtext-table --code-version {params.code} --params {params.cfg} --metrics {input.reference} {input.metrics}"
        " --samples {input.samples} --benchmarks {input.benchmarks} --out {output.table} > {log} 2>&1"
