# The views: results/<experiment> links the artifacts of one experiment in the store (the
# stages' rules build them); the view writer replaces the folder whole.


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
        "{params.python} -m pipeline.core.view --out {output} {params.inputs} > {log} 2>&1"


# The readers beside the decoder (README, "Readers beside the decoder") are their own view,
# results/<experiment>_analysis, a sibling of results/<experiment>.
rule analysis_view:
    input:
        unpack(analysis_view_nodes),
        store=STORE,
    output:
        directory("results/{experiment}_analysis"),
    log:
        f"{LOGS}/experiment/{{experiment}}_analysis.log",
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
        "{params.python} -m pipeline.core.view --out {output} {params.inputs} > {log} 2>&1"
