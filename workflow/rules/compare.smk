# Do the models share their emotion geometry? Every pair of subjects of the run, and each subject
# with each external store (compare.external, e.g. the published Gemma 4 31B vectors), compared
# on the emotions both hold (emotion_vectors.analysis.compare; docs/compare.md): one job per pair
# (compare_pair), then the table, the claims (Holm over the comparison family) and a summary
# (compare_summary). Two subjects of the run read the same stories, so they are compared across
# disjoint halves of the stories (split_vectors), never on the texts both read.

COMPARE = config["compare"]
COMPARE_DIR = f"{RESULTS}/compare"


def _external_stores():
    """The external stores whose path exists (name -> spec), and the skipped ones (name -> why)."""
    present, skipped = {}, {}
    for name, spec in COMPARE["external"].items():
        if Path(spec["path"]).exists():
            present[name] = spec
        else:
            skipped[name] = f"{spec['path']} does not exist"
            logger.info(f"compare: external store {name} skipped: {spec['path']} does not exist")
    return present, skipped


EXTERNAL, EXTERNAL_SKIPPED = _external_stores() if COMPARE["enabled"] else ({}, {})
STORES = [*SUBJECTS, *EXTERNAL]
#: Every pair with at least one subject of this run, in config order (the primary first).
PAIRS = ([(a, b) for i, a in enumerate(STORES) for b in STORES[i + 1:] if a in SUBJECTS or b in SUBJECTS]
         if COMPARE["enabled"] else [])
COMPARE_SETTINGS = {k: COMPARE[k] for k in ("vector_kind", "n_permutations", "n_bootstrap", "nn_k", "k_clusters",
                                            "procrustes_pcs", "procrustes_splits", "seed")}


def external_npz(name):
    return str(EXTERNAL[name]["path"]).endswith(".npz")


def store_path(name):
    """The vector store of a subject or an external store (an npz is imported first)."""
    if name in SUBJECTS:
        return vector_store(name)
    return f"{COMPARE_DIR}/external/{name}.zarr/zarr.json" if external_npz(name) else EXTERNAL[name]["path"]


def crossfitted(a, b):
    """Two subjects of this run read the same stories: compare their split halves, crossed."""
    return bool(COMPARE["crossfit"]) and a in SUBJECTS and b in SUBJECTS


def halves_path(name):
    return f"{subject_dir(name)}/vectors/halves.zarr/zarr.json"


rule compare_import:
    """An external npz of {emotion: vector} as a one-layer vector store
    (analysis.store.store_from_reference_npz)."""
    input:
        lambda wildcards: EXTERNAL[wildcards.external]["path"],
    output:
        f"{COMPARE_DIR}/external/{{external}}.zarr/zarr.json",
    params:
        spec=lambda wildcards: EXTERNAL[wildcards.external],
    wildcard_constraints:
        external="|".join(re.escape(n) for n in EXTERNAL) or "(?!)",
    conda:
        "../../envs/analysis.yaml"
    log:
        f"{LOGS}/compare/import_{{external}}.log",
    threads: 1
    script:
        "../scripts/compare.py"


rule compare_pair:
    """RSA (Mantel test, bootstrap interval), CKA layer by layer, PC1-valence and arousal side by
    side, cluster agreement, nearest-neighbour overlap and a held-out Procrustes map for two stores,
    each against the emotion labels permuted."""
    input:
        a=lambda wildcards: store_path(wildcards.a),
        b=lambda wildcards: store_path(wildcards.b),
        halves_a=lambda wildcards: halves_path(wildcards.a) if crossfitted(wildcards.a, wildcards.b) else [],
        halves_b=lambda wildcards: halves_path(wildcards.b) if crossfitted(wildcards.a, wildcards.b) else [],
    output:
        summary=f"{COMPARE_DIR}/{{a}}/{{b}}/summary.json",
        measures=f"{COMPARE_DIR}/{{a}}/{{b}}/measures.tsv",
        cka=f"{COMPARE_DIR}/{{a}}/{{b}}/cka.tsv",
        valence=report(
            f"{COMPARE_DIR}/{{a}}/{{b}}/valence.tsv",
            caption="../report/compare_valence.rst",
            category="Model comparison",
            subcategory="{a} vs {b}",
        ),
        heatmap=report(
            f"{COMPARE_DIR}/{{a}}/{{b}}/cka.png",
            caption="../report/compare_cka.rst",
            category="Model comparison",
            subcategory="{a} vs {b}",
        ),
    params:
        crossfit=lambda wildcards: crossfitted(wildcards.a, wildcards.b),
        settings=COMPARE_SETTINGS,
    wildcard_constraints:
        a="|".join(re.escape(n) for n in STORES) or "(?!)",
        b="|".join(re.escape(n) for n in STORES) or "(?!)",
    conda:
        "../../envs/analysis.yaml"
    log:
        f"{LOGS}/compare/{{a}}~{{b}}.log",
    benchmark:
        f"{BENCH}/compare/{{a}}~{{b}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/compare.py"


rule compare_summary:
    """Every comparison in one table, its claims with Holm over the comparison family."""
    input:
        summaries=[f"{COMPARE_DIR}/{a}/{b}/summary.json" for a, b in PAIRS],
    output:
        table=report(
            f"{COMPARE_DIR}/comparison.tsv",
            caption="../report/compare_table.rst",
            category="Model comparison",
        ),
        markdown=f"{COMPARE_DIR}/comparison.md",
        claims=f"{COMPARE_DIR}/claims.json",
        summary=f"{COMPARE_DIR}/summary.json",
    params:
        skipped=EXTERNAL_SKIPPED,
    conda:
        "../../envs/analysis.yaml"
    log:
        f"{LOGS}/compare/summary.log",
    threads: 1
    script:
        "../scripts/compare.py"


COMPARE_OUTPUTS = [*rules.compare_summary.output] if PAIRS else []
