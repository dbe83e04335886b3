# ------------------------------------------------------------------ Text-Image (Wikipedia rendered with Pillow)


rule extract_wiki_text:
    input:
        dump=config["data"]["wiki_text"]["dump"],
    output:
        chunks="results/data/wiki_text/chunks.parquet",
    params:
        cfg=stage_params("data.wiki_text"),
        code=command_code_version("extract-wiki-text"),
    log:
        "logs/extract_wiki_text.log",
    benchmark:
        "results/benchmarks/extract_wiki_text.tsv"
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd extract-wiki-text --code-version {params.code} --params {params.cfg} --out {output.chunks} > {log} 2>&1"


rule render_text_images:
    input:
        chunks=rules.extract_wiki_text.output.chunks,
    output:
        images=directory("results/data/text_image"),
    params:
        cfg=stage_params("data.text_image"),
        code=command_code_version("render-text-images"),
    log:
        "logs/render_text_images.log",
    benchmark:
        "results/benchmarks/render_text_images.tsv"
    threads: all_cores
    conda:
        "../../envs/dnd.yaml"
    shell:
        "DND_WORKERS={threads} dnd render-text-images --code-version {params.code} --params {params.cfg} --chunks {input.chunks} --out {output.images} > {log} 2>&1"


rule make_text256:
    input:
        images=rules.render_text_images.output.images,
    output:
        images=directory("results/data/text256"),
    params:
        cfg=stage_params("data.text256"),
        code=command_code_version("resize-images"),
    log:
        "logs/make_text256.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd resize-images --code-version {params.code} --params {params.cfg} --images {input.images} --out {output.images} > {log} 2>&1"


# ------------------------------------------------------------------ arXiv-Image (PDF pages rasterized with PyMuPDF)


rule write_demo_pdfs:
    output:
        pdfs=directory("results/demo/arxiv_pdfs"),
    params:
        cfg=stage_params("demo.pdfs"),
        code=command_code_version("write-demo-pdfs"),
    log:
        "logs/write_demo_pdfs.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd write-demo-pdfs --code-version {params.code} --params {params.cfg} --out {output.pdfs} > {log} 2>&1"


rule rasterize_pdfs:
    input:
        pdfs=config["data"]["arxiv_image"]["pdfs"],
    output:
        images=directory("results/data/arxiv_image"),
    params:
        cfg=stage_params("data.arxiv_image"),
        code=command_code_version("rasterize-pdfs"),
    log:
        "logs/rasterize_pdfs.log",
    benchmark:
        "results/benchmarks/rasterize_pdfs.tsv"
    threads: all_cores
    conda:
        "../../envs/dnd.yaml"
    shell:
        "DND_WORKERS={threads} dnd rasterize-pdfs --code-version {params.code} --params {params.cfg} --pdfs {input.pdfs} --out {output.images} > {log} 2>&1"


# ------------------------------------------------------------------ class-labelled images (ImageNet layout)


rule write_demo_digits:
    output:
        root=directory("results/demo/digits"),
    params:
        cfg=stage_params("demo.digits"),
        code=command_code_version("write-demo-digits"),
    log:
        "logs/write_demo_digits.log",
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd write-demo-digits --code-version {params.code} --params {params.cfg} --out {output.root} > {log} 2>&1"


rule write_demo_glyphs:
    output:
        root=directory("results/demo/glyphs"),
    params:
        cfg=stage_params("demo.glyphs"),
        code=command_code_version("write-demo-glyphs"),
    log:
        "logs/write_demo_glyphs.log",
    benchmark:
        "results/benchmarks/write_demo_glyphs.tsv"
    conda:
        "../../envs/dnd.yaml"
    shell:
        "dnd write-demo-glyphs --code-version {params.code} --params {params.cfg} --out {output.root} > {log} 2>&1"


rule prepare_images:
    input:
        root=config["data"]["classes"]["root"],
        test_root=config["data"]["classes"].get("test_root") or [],  # Table 1a's separate test folder, if any
    output:
        images=directory("results/data/classes"),
    params:
        cfg=stage_params("data.classes"),
        code=command_code_version("prepare-images"),
    log:
        "logs/prepare_images.log",
    benchmark:
        "results/benchmarks/prepare_images.tsv"
    threads: all_cores
    conda:
        "../../envs/dnd.yaml"
    shell:
        "DND_WORKERS={threads} dnd prepare-images --code-version {params.code} --params {params.cfg} --root {input.root} --out {output.images} > {log} 2>&1"
