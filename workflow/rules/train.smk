rule activation_cache:
    input:
        unpack(stage_inputs("activation_cache")),
    output:
        directory(f"{STORE}/activation_cache/{{key}}"),
    log:
        f"{LOGS}/activation_cache/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("activation_cache")
    resources:
        mem_mb=stage_resource("activation_cache", "mem_mb", 16000),
        runtime=stage_resource("activation_cache", "runtime", 120),
        gpu=stage_resource("activation_cache", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("activation_cache"),
        inputs=input_args,
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m pipeline.training.activation_cache --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"


# One allocation, one node: torchrun's standalone rendezvous starts one process per device. It runs
# as `python -m torch.distributed.run` so that no `torchrun` on PATH is needed.
rule train:
    input:
        unpack(stage_inputs("train")),
    output:
        directory(f"{STORE}/train/{{key}}"),
    log:
        f"{LOGS}/train/{{key}}.log",
    conda:
        "../../environment.yml"
    threads: stage_threads("train")
    resources:
        mem_mb=stage_resource("train", "mem_mb", 16000),
        runtime=stage_resource("train", "runtime", 240),
        gpu=stage_resource("train", "gpu", 0),
    params:
        python=PYTHON,
        json=stage_params("train"),
        inputs=input_args,
        nproc=stage_resource("train", "nproc", 1),
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m torch.distributed.run --standalone "
        "--nproc_per_node {params.nproc} -m pipeline.training.train --out {output} "
        "--key {wildcards.key} --params {params.json:q} {params.inputs} > {log} 2>&1"
