# One rule per stage of pipeline/core/stages.py, each the same shape: the stage's module runs on
# its inputs' artifacts with its params and publishes a new store folder named by its key
# (rules/common.smk). A new stage is its module and one entry there, not a new rule here.
for _stage in STAGES:

    rule:
        name:
            _stage
        input:
            unpack(stage_inputs(_stage)),
        output:
            stage_output(_stage),
        log:
            f"{LOGS}/{_stage}/{{key}}.log",
        conda:
            "../../environment.yml"
        threads: stage_threads(_stage)
        resources:
            mem_mb=stage_resource(_stage, "mem_mb", STAGES[_stage].mem_mb),
            runtime=stage_resource(_stage, "runtime", STAGES[_stage].runtime),
            gpu=stage_resource(_stage, "gpu", 0),
        params:
            command=stage_command(_stage),
            json=stage_params(_stage),
            inputs=input_args,
        shell:
            "OMP_NUM_THREADS={threads} {params.command} --out {output} --key {wildcards.key} "
            "--params {params.json:q} {params.inputs} > {log} 2>&1"
