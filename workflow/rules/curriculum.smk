# The reading curriculum: texts the target writes itself, and questions about what it read.


rule texts:
    input:
        unpack(stage_inputs("texts")),
    output:
        directory(f"{STORE}/texts/{{key}}"),
    log:
        f"{LOGS}/texts/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("texts")
    resources:
        mem_mb=stage_resource("texts", "mem_mb", 4000),
        runtime=stage_resource("texts", "runtime", 60),
        gpu=stage_resource("texts", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("texts"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.data.texts --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule context:
    input:
        unpack(stage_inputs("context")),
    output:
        directory(f"{STORE}/context/{{key}}"),
    log:
        f"{LOGS}/context/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("context", "mem_mb", 2000),
        runtime=stage_resource("context", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("context"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.context --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule classification:
    input:
        unpack(stage_inputs("classification")),
    output:
        directory(f"{STORE}/classification/{{key}}"),
    log:
        f"{LOGS}/classification/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("classification", "mem_mb", 2000),
        runtime=stage_resource("classification", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("classification"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.classification --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule relation_qa:
    input:
        unpack(stage_inputs("relation_qa")),
    output:
        directory(f"{STORE}/relation_qa/{{key}}"),
    log:
        f"{LOGS}/relation_qa/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("relation_qa", "mem_mb", 2000),
        runtime=stage_resource("relation_qa", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("relation_qa"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.relation_qa --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule public_tasks:
    input:
        unpack(stage_inputs("public_tasks")),
    output:
        directory(f"{STORE}/public_tasks/{{key}}"),
    log:
        f"{LOGS}/public_tasks/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=stage_resource("public_tasks", "mem_mb", 2000),
        runtime=stage_resource("public_tasks", "runtime", 10),
    params:
        python=PYTHON,
        json=stage_params("public_tasks"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.data.public_tasks --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"
