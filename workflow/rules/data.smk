rule templates:
    input:
        unpack(stage_inputs("templates")),
    output:
        directory(f"{STORE}/templates/{{key}}"),
    log:
        f"{LOGS}/templates/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("templates")
    resources:
        mem_mb=stage_resource("templates", "mem_mb", 8000),
        runtime=stage_resource("templates", "runtime", 60),
        gpu=stage_resource("templates", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("templates"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.data.templates --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule import_latentqa:
    input:
        unpack(stage_inputs("import_latentqa")),
    output:
        directory(f"{STORE}/import_latentqa/{{key}}"),
    log:
        f"{LOGS}/import_latentqa/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("import_latentqa", "mem_mb", 2000),
        runtime=stage_resource("import_latentqa", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("import_latentqa"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.import_latentqa --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule filter:
    input:
        unpack(stage_inputs("filter")),
    output:
        directory(f"{STORE}/filter/{{key}}"),
    log:
        f"{LOGS}/filter/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("filter", "mem_mb", 4000),
        runtime=stage_resource("filter", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("filter"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.filter --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


# Calls an OpenAI-compatible endpoint; completed calls are cached outside the store, so a rerun
# after a crash (or with a changed filter) repeats none of them.
rule curate:
    input:
        unpack(stage_inputs("curate")),
    output:
        directory(f"{STORE}/curate/{{key}}"),
    log:
        f"{LOGS}/curate/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("curate", "mem_mb", 2000),
        runtime=stage_resource("curate", "runtime", 240),
    params:
        python=PYTHON,
        json=stage_params("curate"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.curation.curate --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


# True statements and corrupted copies from the relation facts (the probes' truth task).
rule statements:
    input:
        unpack(stage_inputs("statements")),
    output:
        directory(f"{STORE}/statements/{{key}}"),
    log:
        f"{LOGS}/statements/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("statements", "mem_mb", 2000),
        runtime=stage_resource("statements", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("statements"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.statements --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"
