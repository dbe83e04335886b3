# ------------------------------------------------------------------ DnD-Transformers: training and sampling


wildcard_constraints:
    model=r"[A-Za-z0-9_]+",
    sampling=r"[A-Za-z0-9_]+",


rule train_transformer:
    wildcard_constraints:
        model=name_pattern(trained("transformers")),
    input:
        codes=transformer_codes,
        tokenizer=transformer_tokenizer,
    output:
        model="results/transformers/{model}/model.pt",
        # validation loss and per-depth losses at each eval_every (the val-loss figure's data)
        val_history="results/transformers/{model}/val_history.csv",
    params:
        cfg=transformer_params,
        code=command_code_version("train-transformer"),
    log:
        "logs/train_transformer/{model}.log",
    benchmark:
        "results/benchmarks/train_transformer/{model}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd train-transformer --code-version {params.code} --name {wildcards.model} --params {params.cfg}"
        " --codes {input.codes} --tokenizer {input.tokenizer} --out {output.model} > {log} 2>&1"


# A transformer with `pretrained:` is the authors' released checkpoint: converted (and checked against its
# tokenizer) into the same model.pt, then sampled, evaluated and tabled like a trained one.
rule import_authors_transformer:
    wildcard_constraints:
        model=name_pattern(pretrained("transformers")),
    input:
        checkpoint=pretrained_files("transformers", "model"),
        tokenizer=transformer_tokenizer,
    output:
        model="results/transformers/{model}/model.pt",
    params:
        cfg=transformer_params,
        code=command_code_version("import-authors-transformer"),
    log:
        "logs/import_authors_transformer/{model}.log",
    threads: 1
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd import-authors-transformer --code-version {params.code} --name {wildcards.model} --params {params.cfg}"
        " --tokenizer {input.tokenizer} --out {output.model} > {log} 2>&1"


rule sample_images:
    wildcard_constraints:
        model=name_pattern(config.get("transformers", {})),
    input:
        model=rules.train_transformer.output.model,
        tokenizer=transformer_tokenizer,
    output:
        samples=directory("results/samples/{model}/{sampling}"),
    params:
        cfg=sampling_params,
        code=command_code_version("sample"),
    log:
        "logs/sample_images/{model}/{sampling}.log",
    benchmark:
        "results/benchmarks/sample_images/{model}/{sampling}.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../../envs/dnd.yaml"
    shell:
        "OMP_NUM_THREADS={threads} dnd sample --code-version {params.code} --params {params.cfg} --model {input.model} --tokenizer {input.tokenizer}"
        " --model-name {wildcards.model} --sampling-name {wildcards.sampling} --out {output.samples} > {log} 2>&1"
