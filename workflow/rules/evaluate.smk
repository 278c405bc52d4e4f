rule evaluate:
    input:
        unpack(stage_inputs("evaluate")),
    output:
        directory(f"{STORE}/evaluate/{{key}}"),
    log:
        f"{LOGS}/evaluate/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("evaluate")
    resources:
        mem_mb=stage_resource("evaluate", "mem_mb", 16000),
        runtime=stage_resource("evaluate", "runtime", 120),
        gpu=stage_resource("evaluate", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("evaluate"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.evaluation.evaluate --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule control:
    input:
        unpack(stage_inputs("control")),
    output:
        directory(f"{STORE}/control/{{key}}"),
    log:
        f"{LOGS}/control/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("control")
    resources:
        mem_mb=stage_resource("control", "mem_mb", 16000),
        runtime=stage_resource("control", "runtime", 120),
        gpu=stage_resource("control", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("control"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.control.control --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule explain:
    input:
        unpack(stage_inputs("explain")),
    output:
        directory(f"{STORE}/explain/{{key}}"),
    log:
        f"{LOGS}/explain/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("explain")
    resources:
        mem_mb=stage_resource("explain", "mem_mb", 16000),
        runtime=stage_resource("explain", "runtime", 60),
        gpu=stage_resource("explain", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("explain"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.evaluation.explain --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


# The reading metrics on a few evaluation items at every adapter training published along the
# way (train.adapter_every): the report's reading curve, against steps.
rule reading_curve:
    input:
        unpack(stage_inputs("reading_curve")),
    output:
        directory(f"{STORE}/reading_curve/{{key}}"),
    log:
        f"{LOGS}/reading_curve/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("reading_curve")
    resources:
        mem_mb=stage_resource("reading_curve", "mem_mb", 16000),
        runtime=stage_resource("reading_curve", "runtime", 60),
        gpu=stage_resource("reading_curve", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("reading_curve"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.evaluation.curve --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"
