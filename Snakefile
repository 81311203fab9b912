# emotion-vectors: emotion concepts in a language model's residual stream.
# This file is a table of contents; the rules live in workflow/rules/.
from snakemake.utils import min_version

min_version("9.0")


# The default run's config, used only when no --configfile is given: a config file is complete
# on its own (see emotion_vectors.core.config.assemble_config; common.smk assembles the run's config).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/diagnostics.smk"
include: "workflow/rules/steering.smk"
include: "workflow/rules/behaviour.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/battery.smk"
include: "workflow/rules/findings.smk"


rule all:
    input:
        all_targets(),
