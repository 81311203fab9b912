"""Snakemake script of rule `corpus_report`: one corpus's scores read out.

- ranking.tsv / .png: emotions ranked by their mean score over the corpus, measured from the
  run's neutral dialogues in corpus-sd units, with a percentile bootstrap 95% interval (texts
  resampled). Under the corpus baseline every per-text column has mean 0 by construction, so
  the ranking always uses the neutral dialogues as its reference:
  ``score_ref_e = (x . u_e - n . u_e) / sd_corpus(x . u_e)``, n = mean neutral activation.
- top_texts.tsv: the highest-scoring texts per emotion.
- highlights.html: the top texts of a few emotions, each token coloured by its own
  ``(h_t . u_e - n . u_e) / sd``: the text's score is the mean of these over its pooled tokens.
- labelled_check.json: emotion_vectors.reading.score.labelled_check for a labelled corpus (with the
  Mann-Whitney p, every scorer on the same texts, the PC1-is-valence check and, with the
  shuffled-label vectors, the AUROCs of each shuffle's valence direction).
- ranking_null.tsv: the ranking's means for each shuffle's shuffled-label vectors (the null of
  the corpora agreement, emotion_vectors.reading.text_checks).
- emotion_check.json / .tsv: for a corpus labelled with emotions (scoring.emotion_labelled),
  per mapped emotion the AUROC of its score for its label vs the rest, the NRC lexicon's, and
  the shuffled-label vectors' (emotion_vectors.reading.text_checks.emotion_label_check).

The token view is read by the run's subject-model server (a ``tokens`` request; started if none
is up), so no job of the scoring loads the subject itself.
"""

import json
import time

import numpy as np
import pandas as pd

from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.extraction.highlight import highlight_html
from emotion_vectors.core.jobs import start_job
from emotion_vectors.core.provenance import provenance
from emotion_vectors.extraction.reading import ServerReader
from emotion_vectors.steering.readout import store_valence_direction
from emotion_vectors.reading.score import labelled_check, neutral_baseline, read_scores
from emotion_vectors.extraction.serve_subject import server_from_params
from emotion_vectors.vectors.store_layout import read_store

smk = snakemake  # noqa: F821 - injected by Snakemake
log = start_job(smk, claim_gpus=False)  # reads through the run's model server, which claims its GPU
started = time.perf_counter()
s = dict(smk.params.settings)
corpus = smk.wildcards.corpus
df, meta = read_scores(smk.input.scores)
store = read_store(smk.input.vectors)
emotions = list(meta["emotions"])
layer = int(meta["layer"])
li = store.layers.index(layer)
kind = meta["vector_kind"]  # e.g. denoised_unit
units = np.asarray(store.array(kind)[:, li, :], dtype=np.float64)
direction = store_valence_direction(store, layer, kind=kind)
names = emotions + ["valence"]
basis = np.vstack([units, direction.direction[None, :]])
neutral_vec, neutral_info = neutral_baseline(store, layer, smk.input.neutral)
neutral_proj = dict(zip(names, (basis @ neutral_vec).tolist()))
base_proj = meta["baseline"]["projection"]
sd = meta["projection_sd"]


def raw_col(name):
    return "valence_raw" if name == "valence" else f"raw_{name}"


# Scores from the neutral dialogues, in corpus-sd units: (raw + baseline - neutral) / sd.
scored = np.isfinite(df["valence"].to_numpy(float))
ref = pd.DataFrame({e: (df[raw_col(e)].to_numpy(float) + base_proj[e] - neutral_proj[e]) / sd[e]
                    if sd[e] else np.nan for e in names})
Z = ref.loc[scored, emotions].to_numpy(float)
n = Z.shape[0]
if n == 0:
    raise SystemExit(f"corpus {corpus}: no text was scored ({meta.get('skipped')})")
means = Z.mean(axis=0)
rng = np.random.default_rng(s["seed"])
B = int(s["n_boot"])
boots = np.empty((B, len(emotions)))
for start in range(0, B, 200):
    b = min(200, B - start)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=b)
    boots[start:start + b] = w @ Z / n
lo, hi = (np.quantile(boots, [0.025, 0.975], axis=0) if B else (np.full(len(emotions), np.nan),) * 2)
order = np.argsort(-means, kind="stable")
ranking = pd.DataFrame({
    "rank": np.arange(1, len(emotions) + 1),
    "emotion": [emotions[i] for i in order],
    "mean": means[order], "ci_low": lo[order], "ci_high": hi[order],
    "share_above_neutral": [float((Z[:, i] > 0).mean()) for i in order],
    "n": n,
})
ranking.to_csv(smk.output.ranking, sep="\t", index=False, float_format="%.6g")
log.info("corpus %s: %d texts scored; top emotions %s", corpus, n, ranking["emotion"].head(5).tolist())

# Figure: means with intervals, highest at the top.
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.22 * len(emotions)))
y = np.arange(len(emotions))[::-1]
ax.errorbar(ranking["mean"], y, xerr=[ranking["mean"] - ranking["ci_low"], ranking["ci_high"] - ranking["mean"]],
            fmt="o", ms=4, capsize=2, color="#333333")
ax.axvline(0, color="#999999", lw=0.8, ls="--")
ax.set_yticks(y, ranking["emotion"])
ax.set_xlabel("mean score from the neutral dialogues (corpus sd units), 95% bootstrap CI")
ax.set_title(f"{corpus}: {n} texts, layer {layer}, pool {meta['pool']}")
fig.tight_layout()
fig.savefig(smk.output.ranking_figure, dpi=120)
plt.close(fig)

# Top texts per emotion, one line each: backslash, tab, CR and LF written as \\, \t, \r, \n
# (the exact text is the corpus row's).
def one_line(text):
    if not isinstance(text, str):
        return text
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


k = int(s["top_texts"])
rows = []
for e in emotions:
    col = ref.loc[scored, e].sort_values(ascending=False, kind="stable")
    for rank, (i, val) in enumerate(col.head(k).items(), start=1):
        r = df.loc[i]
        rows.append({"emotion": e, "rank": rank, "row": int(r["row"]), "id": r["id"],
                     "label": r["label"] if "label" in df.columns else None, "score": float(val),
                     "z_corpus": float(r[e]), "n_tokens": r["n_tokens"], "truncated": bool(r["truncated"]),
                     "text": one_line(r["text"]) if "text" in df.columns else None})
top = pd.DataFrame(rows)
top.to_csv(smk.output.top_texts, sep="\t", index=False, float_format="%.6g")

# Token highlights for the top texts of a few emotions.
hl = s["highlight"]
hl_emotions = [e for e in hl["emotions"] if e in emotions] or emotions[:3]
reader = ServerReader(server_from_params(smk.params.server))
pool_start = int(meta["pool_start"])
items = []
max_gap = 0.0
for e in hl_emotions:
    u = units[emotions.index(e)]
    for _, r in top[top["emotion"] == e].head(int(hl["texts"])).iterrows():
        if not isinstance(r["text"], str):
            continue
        tp = reader.token_projections(r["text"], u, layer, max_tokens=int(meta["max_tokens"]))
        values = (tp.projections - neutral_proj[e]) / sd[e]
        pooled = np.arange(len(tp)) >= pool_start
        if pooled.any():
            max_gap = max(max_gap, abs(float(values[pooled].mean()) - float(r["score"])))
        items.append({"emotion": e, "text_id": f"{r['id']} (row {r['row']})", "pieces": tp.pieces,
                      "tokens": tp.tokens, "values": values, "pooled": pooled.tolist(),
                      "score": r["score"],
                      "heading": f"rank {r['rank']}" + (f", label {r['label']}" if isinstance(r["label"], str) else "")})
intro = (f"Corpus {corpus}, layer {layer}, vectors {kind}. Each token is coloured by its residual-stream "
         f"activation at the layer projected on the emotion's unit vector, measured from the mean "
         f"neutral dialogue and divided by the corpus sd of the texts' scores; a text's score is the "
         f"mean over its pooled tokens (positions {pool_start}..).")
# One colour scale for the page: the 95th percentile of |pooled token values| (at least 1).
pooled_vals = [abs(v) for it in items for v, p in zip(it["values"], it["pooled"]) if p]
scale = float(max(1.0, np.round(np.quantile(pooled_vals, 0.95), 1))) if pooled_vals else 3.0
with open(smk.output.highlights, "w", encoding="utf-8") as fh:
    fh.write(highlight_html(items, title=f"Token view: {corpus}", scale=scale, intro=intro))
log.info("highlights: %d texts of %s; largest |mean of pooled token values - score| %.2g",
         len(items), hl_emotions, max_gap)

# The shuffled-label vectors' projections (score_corpus), if the run has them.
from emotion_vectors.reading.text_checks import emotion_label_check, shuffled_means
from emotion_vectors.vectors.build import shuffled_name

null = None
null_path = getattr(smk.input, "shuffled", None)
if null_path:
    with np.load(null_path) as z:
        K = int(z["n_shuffles"])
        if K > 0:
            null = {"K": K, "names": [str(x) for x in z["names"]], "P": np.asarray(z["projections"], float),
                    "NP": np.asarray(z["neutral_projections"], float)}
    if null is not None and null["P"].shape[0] != len(df):
        raise SystemExit(f"{null_path} has {null['P'].shape[0]} rows, the scores {len(df)}: rerun score_corpus")


def null_cols(name):
    """Columns of ``name``'s shuffled counterpart in each shuffle (``valence`` included)."""
    col = {n: i for i, n in enumerate(null["names"])}
    return [col[f"valence@shuffle{k}" if name == "valence" else shuffled_name(name, k)] for k in range(null["K"])]


null_rows = []
if null is not None:
    for e in emotions:
        cols = null_cols(e)
        m = shuffled_means(null["P"][scored][:, cols].T, null["NP"][cols])
        null_rows += [{"shuffle": k, "emotion": e, "mean": float(v)} for k, v in enumerate(m)]
if getattr(smk.output, "ranking_null", None):
    pd.DataFrame(null_rows, columns=["shuffle", "emotion", "mean"]).to_csv(
        smk.output.ranking_null, sep="\t", index=False, float_format="%.6g")

# Labelled check.
spec = smk.params.labelled
if spec:
    if "label" not in df.columns:
        raise SystemExit(f"scoring.labelled.{corpus}: the scores have no label column "
                         f"({spec['label_column']!r} is not in the corpus)")
    check = labelled_check(df, "label", spec["positive"], spec["negative"], n_boot=int(s["n_boot"]),
                           seed=int(s["seed"]),
                           null_valence=None if null is None else null["P"][:, null_cols("valence")].T)
    check = {"corpus": corpus, "labelled": True, **check,
             "valence_direction_check": (meta.get("valence_direction") or {}).get("check")}
    v = check["scorers"]["valence"]
    log.info("labelled check: valence AUROC %s %s; lexicon %s; vader %s", v["auroc"], v["ci95"],
             check["scorers"]["lexicon"]["auroc"], check["scorers"]["vader"]["auroc"])
else:
    check = {"corpus": corpus, "labelled": False}
write_json_atomic(check, smk.output.labelled)

# Emotion-labelled check.
espec = getattr(smk.params, "emotion_labelled", None)
ecols = ["emotion", "label", "n_positive", "n_negative", "auroc", "ci_low", "ci_high", "p_mannwhitney",
         "p_mannwhitney_holm", "nrc_category", "nrc_auroc", "n_shuffles", "shuffled_auroc_mean",
         "shuffled_auroc_p95", "p_shuffled", "p_shuffled_holm", "skipped"]
if espec:
    if "label" not in df.columns:
        raise SystemExit(f"scoring.emotion_labelled.{corpus}: the scores have no label column")
    label_map = espec.get("labels") or smk.params.emotion_labels
    echeck = emotion_label_check(
        df, label_map, label_column="label", separator=espec.get("separator"),
        null_scores=None if null is None else {e: null["P"][:, null_cols(e)].T for e in emotions},
        min_positive=int(espec.get("min_positive", 5)), n_boot=int(s["n_boot"]), seed=int(s["seed"]))
    echeck = {"corpus": corpus, "labelled": True, **echeck}
    fam = echeck["family"]
    log.info("emotion-label check: %d emotions tested, mean AUROC %s %s (p vs shuffles %s); NRC mean %s",
             fam["n_emotions"], fam["mean_auroc"], fam["ci95"], fam.get("p_shuffled"), fam.get("nrc_mean_auroc"))
else:
    echeck = {"corpus": corpus, "labelled": False, "rows": []}
if getattr(smk.output, "emotion_tsv", None):
    pd.DataFrame(echeck["rows"], columns=ecols).to_csv(smk.output.emotion_tsv, sep="\t", index=False,
                                                       float_format="%.6g")
    write_json_atomic(echeck, smk.output.emotion_json)

valence = ref.loc[scored, "valence"].to_numpy(float)
write_json_atomic({
    "corpus": corpus,
    "n_rows": int(len(df)), "n_scored": n, "layer": layer, "pool": meta["pool"], "vector_kind": kind,
    "per_text_baseline": meta["baseline"]["kind"],
    "ranking_reference": {**neutral_info, "projection": neutral_proj,
                          "definition": "score_ref = (x.u - n.u) / sd_corpus(x.u), n = mean neutral activation"},
    "top": ranking["emotion"].head(5).tolist(), "bottom": ranking["emotion"].tail(5).tolist()[::-1],
    "valence_mean": float(valence.mean()),
    "highlight": {"emotions": hl_emotions, "texts": len(items), "colour_scale": scale,
                  "max_abs_gap_token_mean_vs_score": max_gap},
    "labelled": bool(spec),
    "seconds": round(time.perf_counter() - started, 2),
    "provenance": provenance(stage="corpus_report", config_section=s, model_info=reader.info,
                             extra={"scores": str(smk.input.scores)}),
}, smk.output.summary)
