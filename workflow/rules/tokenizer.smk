# ------------------------------------------------------------------ RQ-VAE tokenizers, code maps, Table 1


wildcard_constraints:
    tokenizer=r"[A-Za-z0-9_]+",
    testset="|".join(TESTSETS),
    dataset="|".join(DATASETS),


rule train_tokenizer:
    wildcard_constraints:
        tokenizer=name_pattern(trained("tokenizers")),
    input:
        datasets=tokenizer_datasets,
    output:
        model="results/tokenizers/{tokenizer}/model.pt",
    params:
        cfg=tokenizer_params,
        code=command_code_version("train-tokenizer"),
    log:
        "logs/train_tokenizer/{tokenizer}.log",
    benchmark:
        "results/benchmarks/train_tokenizer/{tokenizer}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd train-tokenizer --code-version {params.code} --name {wildcards.tokenizer} --params {params.cfg} --datasets {input.datasets} --out {output.model} > {log} 2>&1"


# A tokenizer with `pretrained:` is the authors' released checkpoint, not trained: it is checked and written as
# the same model.pt, and the rules after it take it like any other tokenizer.
rule import_authors_tokenizer:
    wildcard_constraints:
        tokenizer=name_pattern(pretrained("tokenizers")),
    input:
        checkpoint=pretrained_files("tokenizers", "tokenizer"),
    output:
        model="results/tokenizers/{tokenizer}/model.pt",
    params:
        cfg=tokenizer_params,
        code=command_code_version("import-authors-tokenizer"),
    log:
        "logs/import_authors_tokenizer/{tokenizer}.log",
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd import-authors-tokenizer --code-version {params.code} --name {wildcards.tokenizer} --params {params.cfg}"
        " --out {output.model} > {log} 2>&1"


rule evaluate_reconstruction:
    wildcard_constraints:
        tokenizer=recon_tokenizer_pattern(),
    input:
        tokenizer=recon_tokenizer,
        testset=testset_path,
        classifier=recon_classifier_input,
    output:
        metrics="results/metrics/recon/{tokenizer}/{testset}.json",
    params:
        cfg=evaluation_params,
        tokenizer=recon_tokenizer_arg,
        classifier=classifier_arg,
        code=command_code_version("evaluate-reconstruction"),
    log:
        "logs/evaluate_reconstruction/{tokenizer}/{testset}.log",
    benchmark:
        "results/benchmarks/evaluate_reconstruction/{tokenizer}/{testset}.tsv"
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd evaluate-reconstruction --code-version {params.code} --params {params.cfg} --tokenizer {params.tokenizer} --tokenizer-name {wildcards.tokenizer}"
        " --testset {input.testset} --testset-name {wildcards.testset} {params.classifier} --out {output.metrics} > {log} 2>&1"


rule evaluate_vae_reconstruction:
    wildcard_constraints:
        vae=name_pattern(reference_vaes()),
    input:
        testset=testset_path,
    output:
        metrics="results/metrics/recon/{vae}/{testset}.json",
    params:
        cfg=vae_evaluation_params,
        code=command_code_version("evaluate-vae-reconstruction"),
    log:
        "logs/evaluate_vae_reconstruction/{vae}/{testset}.log",
    benchmark:
        "results/benchmarks/evaluate_vae_reconstruction/{vae}/{testset}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd evaluate-vae-reconstruction --code-version {params.code} --params {params.cfg} --vae-name {wildcards.vae}"
        " --testset {input.testset} --testset-name {wildcards.testset} --out {output.metrics} > {log} 2>&1"


rule tokenize_images:
    input:
        tokenizer="results/tokenizers/{tokenizer}/model.pt",
        dataset=dataset_path,
    output:
        codes=directory("results/codes/{tokenizer}/{dataset}"),
    params:
        crops=ten_crop_arg,
        code=command_code_version("tokenize-images"),
    log:
        "logs/tokenize_images/{tokenizer}/{dataset}.log",
    benchmark:
        "results/benchmarks/tokenize_images/{tokenizer}/{dataset}.tsv"
    threads: all_cores
    conda:
        "../../envs/dnd.yaml"
    shell:
        "DND_WORKERS={threads} dnd tokenize-images --code-version {params.code} --tokenizer {input.tokenizer} --dataset {input.dataset} {params.crops}"
        " --out {output.codes} > {log} 2>&1"


rule make_table1a:
    input:
        metrics=recon_metrics("table1a"),
    output:
        table=report("results/table1a.csv", caption="../report/table1a.rst", category="Table 1"),
        plot=report("results/table1a.png", caption="../report/table1a.rst", category="Table 1"),
        grids=report("results/table1a_grids.png", caption="../report/table1_grids.rst", category="Table 1"),
    params:
        cfg=table_params("table1a"),
        code=command_code_version("make-table1"),
    log:
        "logs/make_table1a.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd make-table1 --code-version {params.code} --table table1a --params {params.cfg} --metrics {input.metrics} --out {output.table} > {log} 2>&1"


rule make_table1b:
    input:
        metrics=recon_metrics("table1b"),
    output:
        table=report("results/table1b.csv", caption="../report/table1b.rst", category="Table 1"),
        plot=report("results/table1b.png", caption="../report/table1b.rst", category="Table 1"),
        grids=report("results/table1b_grids.png", caption="../report/table1_grids.rst", category="Table 1"),
    params:
        cfg=table_params("table1b"),
        code=command_code_version("make-table1"),
    log:
        "logs/make_table1b.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd make-table1 --code-version {params.code} --table table1b --params {params.cfg} --metrics {input.metrics} --out {output.table} > {log} 2>&1"
