rule report:
    input:
        unpack(stage_inputs("report")),
    output:
        report(
            directory(f"{STORE}/report/{{key}}"),
            patterns=["{name}.png"],
            caption="../report/report.rst",
            category="Decoder",
        ),
    params:
        json=stage_params("report"),
        inputs=input_args,
    log:
        f"{LOGS}/report/{{key}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline.report --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule experiment:
    input:
        unpack(experiment_nodes),
    output:
        directory("results/{experiment}"),
    params:
        inputs=input_args,
    log:
        f"{LOGS}/experiment/{{experiment}}.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m pipeline.view --view {output} {params.inputs} > {log} 2>&1"
