# ------------------------------------------------------------------ Text-Image (Wikipedia rendered with Pillow)


rule extract_wiki_text:
    input:
        dump=config["data"]["wiki_text"]["dump"],
    output:
        chunks="results/data/wiki_text/chunks.parquet",
    params:
        cfg=stage_params("data.wiki_text"),
        code=code_version("dnd/data/wiki.py", "dnd/stages/text_image.py"),
    log:
        "logs/extract_wiki_text.log",
    benchmark:
        "results/benchmarks/extract_wiki_text.tsv"
    shell:
        "{DND} extract-wiki-text --params {params.cfg} --out {output.chunks} > {log} 2>&1"


rule render_text_images:
    input:
        chunks=rules.extract_wiki_text.output.chunks,
    output:
        images=directory("results/data/text_image"),
    params:
        cfg=stage_params("data.text_image"),
        code=code_version("dnd/data/render.py", "dnd/data/splits.py", "dnd/data/shards.py", "dnd/stages/text_image.py"),
    log:
        "logs/render_text_images.log",
    benchmark:
        "results/benchmarks/render_text_images.tsv"
    threads: workflow.cores
    shell:
        "DND_WORKERS={threads} {DND} render-text-images --params {params.cfg} --chunks {input.chunks} --out {output.images} > {log} 2>&1"


rule make_text256:
    input:
        images=rules.render_text_images.output.images,
    output:
        images=directory("results/data/text256"),
    params:
        cfg=stage_params("data.text256"),
        code=code_version("dnd/data/shards.py", "dnd/stages/text_image.py"),
    log:
        "logs/make_text256.log",
    shell:
        "{DND} resize-images --params {params.cfg} --images {input.images} --out {output.images} > {log} 2>&1"
