"""Snakemake script of rule `corpora_comparison`: where the corpora's emotion rankings differ
(Spearman correlation between their mean-score vectors; per-emotion ranks), the labelled
checks side by side, and the stage's claims (claims.json, emotion_vectors.reading.text_checks):
the corpora agreement against the shuffled-label vectors, each labelled corpus's valence AUROC,
each emotion-labelled corpus's emotion AUROCs."""

import itertools
import json

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from emotion_vectors.core.claims import write_claims
from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.core.jobs import start_job
from emotion_vectors.reading.text_checks import agreement_claims, corpora_agreement, emotion_claims, valence_auroc_claim

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk)
corpora = list(smk.params.corpora)
rank = {c: pd.read_csv(p, sep="\t").set_index("emotion") for c, p in zip(corpora, smk.input.rankings)}
emotions = list(rank[corpora[0]].index)
table = pd.DataFrame(index=pd.Index(emotions, name="emotion"))
for c in corpora:
    table[f"mean_{c}"] = rank[c]["mean"].reindex(emotions)
    table[f"rank_{c}"] = rank[c]["rank"].reindex(emotions)
rank_cols = [f"rank_{c}" for c in corpora]
table["rank_range"] = table[rank_cols].max(axis=1) - table[rank_cols].min(axis=1)
table = table.sort_values(["rank_range", f"rank_{corpora[0]}"], ascending=[False, True])
table.reset_index().to_csv(smk.output.ranks, sep="\t", index=False, float_format="%.6g")

# The agreement test: the same Spearman with each shuffle's shuffled-label vectors (same offset
# from the neutral dialogues, no emotion labels) is its null.
null_paths = list(getattr(smk.input, "ranking_null", []) or [])
null_means = None
if len(null_paths) == len(corpora):
    null_means = {}
    for c, pth in zip(corpora, null_paths):
        nt = pd.read_csv(pth, sep="\t")
        if nt.empty:
            null_means = None
            break
        null_means[c] = nt.pivot(index="shuffle", columns="emotion", values="mean").reindex(columns=emotions).to_numpy(float)
real_means = {c: table[f"mean_{c}"].reindex(emotions).to_numpy(float) for c in corpora}  # null's order
agreement = corpora_agreement(real_means, null_means, n_boot=int(smk.params.n_boot), seed=int(smk.params.seed))
by_pair = {(pr["corpus_a"], pr["corpus_b"]): pr for pr in agreement["pairs"]}

pairs = []
for a, b in itertools.combinations(corpora, 2):
    x, y = table[f"mean_{a}"].to_numpy(float), table[f"mean_{b}"].to_numpy(float)
    rho, p = spearmanr(x, y) if len(emotions) > 2 else (np.nan, np.nan)
    diff = (table[f"rank_{a}"] - table[f"rank_{b}"]).abs().sort_values(ascending=False, kind="stable")
    most = [f"{e} ({int(table.at[e, f'rank_{a}'])} vs {int(table.at[e, f'rank_{b}'])})" for e in diff.index[:5]]
    ag = by_pair[(a, b)]
    pairs.append({"corpus_a": a, "corpus_b": b, "spearman": float(rho), "ci_low": ag["ci_low"],
                  "ci_high": ag["ci_high"], "p_naive": float(p), "null_median": ag.get("null_median"),
                  "n_shuffles": agreement["family"]["n_shuffles"], "p_shuffled": ag["p_shuffled"],
                  "n_emotions": len(emotions), "mean_abs_rank_difference": float(diff.mean()),
                  "most_different": "; ".join(most)})
    log.info("%s vs %s: Spearman %.3f (naive p %.2g, shuffled-label median %s, p vs shuffles %s); "
             "most different %s", a, b, rho, p, ag.get("null_median"), ag["p_shuffled"], most[:3])
pd.DataFrame(pairs, columns=["corpus_a", "corpus_b", "spearman", "ci_low", "ci_high", "p_naive",
                             "null_median", "n_shuffles", "p_shuffled", "n_emotions",
                             "mean_abs_rank_difference", "most_different"]).to_csv(
    smk.output.spearman, sep="\t", index=False, float_format="%.6g")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

C = len(corpora)
rho_m = np.eye(C)
for pr in pairs:
    i, j = corpora.index(pr["corpus_a"]), corpora.index(pr["corpus_b"])
    rho_m[i, j] = rho_m[j, i] = pr["spearman"]
show = list(table.index[: min(25, len(emotions))])
fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.25 * max(len(show), 2 * C)),
                         gridspec_kw={"width_ratios": [1, 1.4]})
im = axes[0].imshow(rho_m, vmin=-1, vmax=1, cmap="RdBu_r")
axes[0].set_xticks(range(C), corpora, rotation=45, ha="right")
axes[0].set_yticks(range(C), corpora)
for i in range(C):
    for j in range(C):
        axes[0].text(j, i, f"{rho_m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                     color="white" if abs(rho_m[i, j]) > 0.5 else "black")
axes[0].set_title("Spearman of mean emotion scores")
fig.colorbar(im, ax=axes[0], shrink=0.6)
yy = np.arange(len(show))[::-1]
for i, c in enumerate(corpora):  # dodged vertically so equal ranks stay visible
    axes[1].plot(table.loc[show, f"rank_{c}"], yy + (i - (C - 1) / 2) * min(0.6 / C, 0.15), "o",
                 label=c, alpha=0.85)
axes[1].set_yticks(yy, show)
axes[1].invert_xaxis()
axes[1].xaxis.get_major_locator().set_params(integer=True)
axes[1].set_xlabel("rank in corpus (1 = highest mean score)")
axes[1].set_title("emotions whose rank differs most" if C > 1 else "one corpus: nothing to compare")
axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
fig.savefig(smk.output.figure, dpi=120)
plt.close(fig)

checks = {}
rows = []
for c, p in zip(corpora, smk.input.labelled):
    chk = json.loads(open(p, encoding="utf-8").read())
    if not chk.get("labelled"):
        continue
    checks[c] = chk
    vchk = chk.get("valence_direction_check") or {}
    row = {"corpus": c, "n_positive": chk["n_positive"], "n_negative": chk["n_negative"],
           "pc1_is_valence": vchk.get("is_valence"), "pc1_valence_r": vchk.get("r"),
           "pc1_valence_ci_low": vchk.get("ci_low"), "pc1_valence_ci_high": vchk.get("ci_high"),
           "valence_p_mannwhitney": (chk["scorers"].get("valence") or {}).get("p_mannwhitney"),
           "valence_p_shuffled": chk.get("p_shuffled")}
    for name in ("valence", "lexicon", "vader", "valence_on_lexicon_rated"):
        sc = chk["scorers"].get(name) or {}
        ci = sc.get("ci95") or [None, None]
        row |= {f"{name}_auroc": sc.get("auroc"), f"{name}_ci_low": ci[0], f"{name}_ci_high": ci[1],
                f"{name}_n": sc.get("n")}
    same = chk.get("same_texts") or {}
    row["same_texts_n"] = same.get("n")
    for name in ("valence", "lexicon", "vader"):
        sc = (same.get("scorers") or {}).get(name) or {}
        ci = sc.get("ci95") or [None, None]
        row |= {f"same_{name}_auroc": sc.get("auroc"), f"same_{name}_ci_low": ci[0], f"same_{name}_ci_high": ci[1]}
    for other in ("vader", "lexicon"):
        d = same.get(f"valence_minus_{other}") or {}
        ci = d.get("ci95") or [None, None]
        row |= {f"same_valence_minus_{other}": d.get("difference"), f"same_valence_minus_{other}_ci_low": ci[0],
                f"same_valence_minus_{other}_ci_high": ci[1]}
    rows.append(row)
cols = (["corpus", "n_positive", "n_negative", "pc1_is_valence", "pc1_valence_r", "pc1_valence_ci_low",
         "pc1_valence_ci_high", "valence_p_mannwhitney", "valence_p_shuffled"]
        + [f"{n}_{k}" for n in ("valence", "lexicon", "vader", "valence_on_lexicon_rated")
           for k in ("auroc", "ci_low", "ci_high", "n")]
        + ["same_texts_n"] + [f"same_{n}_{k}" for n in ("valence", "lexicon", "vader") for k in ("auroc", "ci_low", "ci_high")]
        + [f"same_valence_minus_{o}{k}" for o in ("vader", "lexicon") for k in ("", "_ci_low", "_ci_high")])
pd.DataFrame(rows, columns=cols).to_csv(smk.output.labelled, sep="\t", index=False, float_format="%.6g")
write_json_atomic(checks, smk.output.labelled_json)

# The stage's claims.
claims = agreement_claims(agreement, figure=str(smk.output.figure))
for c in checks:
    claims.append(valence_auroc_claim(c, checks[c], figure=str(smk.output.labelled)))
for c, pth in zip(corpora, list(getattr(smk.input, "emotion", []) or [])):
    echk = json.loads(open(pth, encoding="utf-8").read())
    if echk.get("labelled"):
        claims += emotion_claims(c, echk, figure=pth.replace(".json", ".tsv"))
if getattr(smk.output, "claims", None):
    write_claims(claims, smk.output.claims)
for cl in claims:
    log.info("claim %s: %s (statistic %s, p %s, adjusted %s)%s", cl.id, cl.verdict, cl.statistic, cl.p,
             cl.p_adjusted, f"; {cl.note}" if cl.note else "")
