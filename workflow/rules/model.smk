rule prepare_model:
    input:
        unpack(stage_inputs("prepare_model")),
    output:
        directory(f"{STORE}/prepare_model/{{key}}"),
    log:
        f"{LOGS}/prepare_model/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("prepare_model")
    resources:
        mem_mb=stage_resource("prepare_model", "mem_mb", 8000),
        runtime=stage_resource("prepare_model", "runtime", 60),
    params:
        python=PYTHON,
        json=stage_params("prepare_model"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.mechanism.prepare_model --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"
