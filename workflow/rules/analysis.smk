# Readers beside the decoder (README, "Readers beside the decoder"): every block's pooled residual
# of the filter's dialogs and of the statements, probes and CCS on them, the logit lens.
# results/<experiment>_analysis is their own view (a sibling of results/<experiment>, whose
# directory output the view writer replaces whole).


rule layer_cache:
    input:
        unpack(stage_inputs("layer_cache")),
    output:
        directory(f"{STORE}/layer_cache/{{key}}"),
    log:
        f"{LOGS}/layer_cache/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("layer_cache")
    resources:
        mem_mb=stage_resource("layer_cache", "mem_mb", 16000),
        runtime=stage_resource("layer_cache", "runtime", 60),
        gpu=stage_resource("layer_cache", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("layer_cache"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.analysis.layer_cache --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule probes:
    input:
        unpack(stage_inputs("probes")),
    output:
        directory(f"{STORE}/probes/{{key}}"),
    log:
        f"{LOGS}/probes/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("probes")
    resources:
        mem_mb=stage_resource("probes", "mem_mb", 16000),
        runtime=stage_resource("probes", "runtime", 60),
        gpu=stage_resource("probes", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("probes"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.analysis.probes --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


rule lens:
    input:
        unpack(stage_inputs("lens")),
    output:
        directory(f"{STORE}/lens/{{key}}"),
    log:
        f"{LOGS}/lens/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("lens")
    resources:
        mem_mb=stage_resource("lens", "mem_mb", 8000),
        runtime=stage_resource("lens", "runtime", 30),
        gpu=stage_resource("lens", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("lens"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.analysis.lens --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


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
        "{params.python} -m pipeline.core.view --view {output} {params.inputs} > {log} 2>&1"
