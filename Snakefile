# LatentQA decoders: prepare -> data -> filter -> cache -> train -> evaluate / control -> report.
# Every artifact lives at results/store/<stage>/<key>; see DESIGN §3 and workflow/rules/common.smk.
from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules:
    experiment,


rule all:
    default_target: True
    input:
        default_targets(),
