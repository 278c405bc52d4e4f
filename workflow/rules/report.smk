rule report:
    input:
        unpack(stage_inputs("report")),
    output:
        report(
            directory(f"{STORE}/report/{{key}}"),
            # The report's figures and its text-only pages (summary.html shows the figures by
            # relative path, which the Snakemake report does not carry).
            patterns=["{name}.png", "{name,headline|examples}.html"],
            caption="../report/report.rst",
            category="Decoder",
        ),
    log:
        f"{LOGS}/report/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        python=PYTHON,
        json=stage_params("report"),
        inputs=input_args,
    shell:
        "{params.python} -m pipeline.report.report --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule experiment:
    input:
        unpack(experiment_nodes),
        store=STORE,
    output:
        directory("results/{experiment}"),
    log:
        f"{LOGS}/experiment/{{experiment}}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        python=PYTHON,
        inputs=view_args,
    shell:
        "{params.python} -m pipeline.core.view --view {output} {params.inputs} > {log} 2>&1"
